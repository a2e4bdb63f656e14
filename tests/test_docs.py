"""The documentation's commands run as written.

Every `main.py`, `run_with_submitit.py`, `tools/*.py` and `benchmarks/*.py` command in a fenced block of README.md or
docs/*.md is parsed by the script's own argument parser (the script runs as `__main__` until its first completed
`parse_args`, then stops: nothing is trained or written), and every project path a command names (configs,
scripts) exists. README.md stays a front page, and no project file points at the `shared/` folder beside the
checkout, which users do not have.
"""
import argparse
import glob
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ['README.md'] + sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, 'docs', '*.md')))
PROJECT_DIRS = ('configs/', 'tools/', 'benchmarks/', 'segmentation/', 'detection/', 'tests/', 'modalities/', 'docs/')
README_BUDGET_CHARS = 15_000


def fenced_shell_lines(text):
    """The logical lines (continuations joined, comments dropped) of a markdown text's fenced code blocks."""
    lines, in_block, pending = [], False, ''
    for raw in text.splitlines():
        if raw.lstrip().startswith('```'):
            in_block, pending = not in_block, ''
            continue
        if not in_block:
            continue
        line = raw.split(' # ')[0].rstrip() if not raw.lstrip().startswith('#') else ''
        if line.endswith('\\'):
            pending += line[:-1] + ' '
            continue
        if pending + line:
            lines.append(pending + line)
        pending = ''
    return lines


def script_commands(line):
    """(script, argv) for each project Python script the shell line runs."""
    commands = []
    for segment in re.split(r'&&|\|\||;|\|', line):
        try:
            tokens = shlex.split(segment)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token.endswith('.py') and token.split('/')[0] in ('main.py', 'run_with_submitit.py', 'tools', 'benchmarks'):
                commands.append((token, tokens[i + 1:]))
                break
    return commands


def documented_commands():
    found = []
    for doc in DOC_FILES:
        with open(os.path.join(REPO_ROOT, doc)) as f:
            for line in fenced_shell_lines(f.read()):
                for script, argv in script_commands(line):
                    found.append(pytest.param(script, argv, id=f'{doc}: {script} {" ".join(argv)[:60]}'))
    return found


class _Parsed(Exception):
    pass


def test_docs_hold_commands_for_the_main_scripts():
    scripts = {param.values[0] for param in documented_commands()}
    assert {'main.py', 'run_with_submitit.py', 'tools/erf.py', 'tools/export_onnx.py', 'tools/make_shards.py'} <= scripts


@pytest.mark.parametrize('script,argv', documented_commands())
def test_documented_command_parses(script, argv, monkeypatch):
    path = os.path.join(REPO_ROOT, script)
    assert os.path.isfile(path), f'{script} is documented but does not exist'
    for token in argv:
        value = token.split('=', 1)[-1]
        if value.startswith(PROJECT_DIRS) and '*' not in value and '{' not in value:
            assert os.path.exists(os.path.join(REPO_ROOT, value)), f'{script} names {value}, which does not exist'

    original_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original_parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_then_stop)
    monkeypatch.setattr(sys, 'argv', [path] + argv)
    monkeypatch.syspath_prepend(os.path.dirname(path))
    monkeypatch.syspath_prepend(REPO_ROOT)
    monkeypatch.chdir(REPO_ROOT)
    try:
        runpy.run_path(path, run_name='__main__')
    except _Parsed:
        return
    except SystemExit as error:
        pytest.fail(f'{script} {" ".join(argv)}: the parser rejected the documented command (exit {error.code})')
    pytest.fail(f'{script} ran to the end without parsing its arguments')


def test_readme_is_a_front_page():
    with open(os.path.join(REPO_ROOT, 'README.md')) as f:
        text = f.read()
    assert len(text) <= README_BUDGET_CHARS, f'README.md has {len(text)} characters; move detail into docs/'
    for page in re.findall(r'\]\((docs/[^)#]+)', text):
        assert os.path.isfile(os.path.join(REPO_ROOT, page)), f'README.md links to missing {page}'


def test_doc_links_between_pages_resolve():
    for doc in DOC_FILES:
        with open(os.path.join(REPO_ROOT, doc)) as f:
            text = f.read()
        for target in re.findall(r'\]\(([^)#:\s]+\.md)', text):
            resolved = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(doc), target))
            assert os.path.isfile(resolved), f'{doc} links to {target}, which does not exist'


def test_no_project_file_points_at_the_shared_folder_beside_the_checkout():
    tracked = subprocess.run(['git', 'ls-files'], cwd=REPO_ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.fail(f'git ls-files failed: {tracked.stderr}')
    pattern = re.compile(r'\.\./shared/|/work/shared|shared/(seeds|reference)/')
    offenders = []
    for name in tracked.stdout.split():
        if name == 'tests/test_docs.py' or not os.path.isfile(os.path.join(REPO_ROOT, name)):
            continue
        with open(os.path.join(REPO_ROOT, name), errors='ignore') as f:
            if pattern.search(f.read()):
                offenders.append(name)
    assert not offenders, f'these files point at the shared/ folder users do not have: {offenders}'
