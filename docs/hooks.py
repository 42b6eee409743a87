"""MkDocs hook: the command-line reference is the parser's own help, so it cannot go stale."""

import contextlib
import io

MARKER = "<!-- cli-help -->"


def _help(argv: list[str]) -> str:
    from ppl_ecmh.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv + ["--help"])
    return out.getvalue()


def on_page_markdown(markdown, page, **kwargs):
    if MARKER not in markdown:
        return markdown
    sections = [f"## `ppl-ecmh`\n\n```text\n{_help([])}```\n"]
    for command in ("sample", "compare", "eval", "report", "models"):
        sections.append(f"## `ppl-ecmh {command}`\n\n```text\n{_help([command])}```\n")
    return markdown.replace(MARKER, "\n".join(sections))
