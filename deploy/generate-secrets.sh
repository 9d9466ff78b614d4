#!/bin/sh
# Creates each named secret in FOLDER once, as 64 random hex characters, and keeps it across
# restarts: docker-compose runs this before anything that reads the secrets, so no secret is
# ever written in a compose file or shipped in the repository.
#   generate-secrets.sh FOLDER NAME...
set -eu
folder=$1
shift
mkdir -p "$folder"
for name in "$@"; do
    if [ ! -s "$folder/$name" ]; then
        # Written under a temporary name, then renamed: a reader never sees half a secret.
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$folder/.$name.tmp"
        echo >> "$folder/.$name.tmp"
        # Readable by the services that share this volume (each runs as its own user).
        chmod 0444 "$folder/.$name.tmp"
        mv "$folder/.$name.tmp" "$folder/$name"
        echo "generated $folder/$name"
    fi
done
