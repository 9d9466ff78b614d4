"""`nudge check` on `nudge_category` and `nudge_title`: each problem with file and line."""

from __future__ import annotations

from tests.test_check import add_rule_file, line_of, problems_in, workspace  # noqa: F401

RULES = """\
    groups:
      - name: categories
        rules:
          - alert: TemplatedCategory
            expr: vector(1)
            labels: {email_template: usage_drop, user_id: u1}
            annotations:
              nudge_category: "{{ $labels.plan }}"
          - alert: EmptyTitle
            expr: vector(1)
            labels: {email_template: usage_drop, user_id: u1}
            annotations:
              nudge_category: usage
              nudge_title: ""
          - alert: LongTitle
            expr: vector(1)
            labels: {email_template: usage_drop, user_id: u1}
            annotations:
              nudge_title: "%s"
    """ % ("x" * 81)


def test_invalid_category_and_title_are_problems_with_file_and_line(workspace):  # noqa: F811
    path = add_rule_file(workspace, "categories.yml", RULES)
    result = workspace()
    assert result.exit_code == 1, result.output
    templated = line_of(path, 'nudge_category: "{{')
    empty = line_of(path, 'nudge_title: ""')
    long = line_of(path, 'nudge_title: "xxx')
    assert problems_in(result) == [
        f"{path}:{templated}: TemplatedCategory: nudge_category "
        "must be fixed text, not a template ('{{ $labels.plan }}'): the preference page lists "
        "each rule's nudge_category before any alert fires",
        f"{path}:{empty}: EmptyTitle: nudge_title is empty",
        f"{path}:{long}: LongTitle: nudge_title is 81 "
        "characters long (at most 80)",
    ]


def test_one_category_with_two_titles_is_a_warning_naming_both(workspace):  # noqa: F811
    path = add_rule_file(workspace, "titles.yml", """\
        groups:
          - name: titles
            rules:
              - alert: First
                expr: vector(1)
                labels: {email_template: usage_drop, user_id: u1}
                annotations: {nudge_category: usage, nudge_title: Usage reports}
              - alert: Second
                expr: vector(1)
                labels: {email_template: usage_drop, user_id: u1}
                annotations:
                  nudge_category: usage
                  nudge_title: Usage tips
        """)
    result = workspace()
    assert result.exit_code == 0, result.output
    second = line_of(path, "nudge_title: Usage tips")
    first = line_of(path, "nudge_title: Usage reports")
    assert (f"{path}:{second}: warning: Second: category 'usage' is titled 'Usage reports' by "
            f"First ({path}:{first}) but 'Usage tips' here: recipients see 'Usage reports'"
            ) in result.stderr


def test_valid_categories_and_titles_pass(workspace):  # noqa: F811
    add_rule_file(workspace, "fine.yml", """\
        groups:
          - name: fine
            rules:
              - alert: Fine
                expr: vector(1)
                labels: {email_template: usage_drop, user_id: u1}
                annotations: {nudge_category: usage, nudge_title: "Usage & quota – monthly"}
        """)
    result = workspace()
    assert result.exit_code == 0, result.output
    assert "nudge_" not in result.stderr
