#!/usr/bin/env python3
"""Every value of the chart is documented: in values.yaml by a `# --` comment right above it, and in
the chart's README by a row of the table of its "## Values" section naming the value's full path in backquotes.

    check-docs.py VALUES.yaml README.md

values.yaml is read by indentation (the chart keeps it to plain block mappings): a key with a `# --`
comment is a documented value, its children (a map or list given whole, e.g. kubeletConfig or
resources) are part of it; a key without one must be a section whose children are all documented.
"""

import re
import sys

KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_.-]*):(.*)$")


def documented_values(path):
    values, problems = [], []
    stack = []  # (indent, key)
    skip_below = None  # indent of a documented value whose children are part of it
    comment = []
    for lineno, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        m = KEY.match(line)
        indent = len(line) - len(line.lstrip())
        if skip_below is not None:
            if indent > skip_below:
                comment = []
                continue
            skip_below = None
        if not m:
            comment = []
            continue
        key, rest = m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full = ".".join([k for _, k in stack] + [key])
        if comment and comment[0].startswith("# --"):
            values.append(full)
            skip_below = indent
        elif rest and not rest.startswith("#"):
            problems.append(f"values.yaml:{lineno}: {full} has no `# --` comment above it")
        else:
            stack.append((indent, key))
        comment = []
    return values, problems


def main():
    values, problems = documented_values(sys.argv[1])
    readme = open(sys.argv[2], encoding="utf-8").read()
    section = re.search(r"^## Values$(.*?)(^## |\Z)", readme, re.M | re.S)
    if not section:
        print("README.md: no \"## Values\" section", file=sys.stderr)
        return 1
    rows = set(re.findall(r"^\| `([^`]+)` \|", section.group(1), re.M))
    for v in values:
        if v not in rows:
            problems.append(f"README.md: no row for `{v}` in the values table")
    for r in sorted(rows - set(values)):
        problems.append(f"README.md: the values table has `{r}`, which values.yaml does not")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{len(values)} values documented in values.yaml and the README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
