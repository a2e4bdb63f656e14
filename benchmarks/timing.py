"""Timing and machine-description helpers shared by the benchmark scripts in this folder.

CPU timings on a shared machine are noisy, so every number is the median of several timed
repeats taken after a few untimed warm-up calls (which also let oneDNN pick and cache kernels),
and variants that are compared with each other are timed interleaved.
"""
import datetime
import os
import platform
import re
import statistics
import time

import torch


def interleaved_medians(steps, warmup=2, repeats=5):
    """{label: median seconds} of several callables timed round-robin (one call of each per round).

    On a shared machine a burst of outside load then slows every variant alike, so their ratios
    stay meaningful even when the absolute numbers drift.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def cpu_model_name():
    """The CPU model string from /proc/cpuinfo (Linux), falling back to platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_summary():
    """One line naming the CPU, its instruction set as torch uses it, core count, torch version and intra-op thread
    count in use (the fast paths' speed depends on the instruction set: AVX2 and AVX-512 machines differ)."""
    return (f"{cpu_model_name()} ({torch.backends.cpu.get_cpu_capability()}), nproc={os.cpu_count()}, "
            f"torch {torch.__version__}, threads={torch.get_num_threads()}")


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header, rows):
    """Render a list of rows (each a list of cells) under `header` as a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(path, body, heading):
    """Put `body` under `heading` in the markdown file, replacing that section only
    (up to the next '## ' or '### ' heading); other sections are left exactly as they are."""
    text = open(path).read() if os.path.exists(path) else ''
    section = f'{heading}\n\n{body.strip()}\n'
    if heading in text:
        before, after = text.split(heading, 1)
        match = re.search(r'\n#{2,3} ', after)
        rest = after[match.start() + 1:] if match else ''
        text = before + section + ('\n' + rest if rest else '')
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + section
    with open(path, 'w') as f:
        f.write(text)
