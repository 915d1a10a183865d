"""What the machine offers a training run: native bfloat16 on the CPU, and the precision
`--precision=auto` resolves to.

Pure Python: TensorFlow is imported only when `resolve_precision` has to count GPUs itself,
so `retinanet <command> --help` stays fast.
"""

from __future__ import annotations

import sys

# /proc/cpuinfo flags of x86 CPUs with bfloat16 arithmetic: AVX512_BF16 (Cooper Lake, Zen 4
# and later: bf16 dot products) and AMX_BF16 (Sapphire Rapids and later: bf16 tile matmuls).
# oneDNN runs TensorFlow's bf16 convolutions and matmuls on them; without them bf16 is
# emulated in float32 and slower than float32 itself.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"
AUTO = "auto"


def cpu_bf16_flags(cpuinfo: str = CPUINFO) -> tuple:
    """The `BF16_FLAGS` the CPU lists in `cpuinfo`, in `BF16_FLAGS`' order.

    Args:
        cpuinfo: the path of a /proc/cpuinfo-format file (tests pass sample texts).

    Returns:
        A tuple of flag names; empty off Linux or when the file is missing or unreadable.
    """
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return ()
    found = set()
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == "flags":  # one line per logical CPU; all list the same
            found.update(value.split())
    return tuple(flag for flag in BF16_FLAGS if flag in found)


def cpu_has_native_bf16(cpuinfo: str = CPUINFO) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512_BF16 or AMX_BF16; see
    `cpu_bf16_flags`). False off Linux or when `cpuinfo` cannot be read."""
    return bool(cpu_bf16_flags(cpuinfo))


def _count_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str, *, gpus: int | None = None, tpu: bool = False,
                      cpuinfo: str = CPUINFO) -> tuple:
    """The Keras dtype policy for a `--precision` value, and why.

    "auto" resolves to:
    - "float32" on a TPU or with a GPU (what `retinanet train` has always used there;
      pass mixed_float16 or mixed_bfloat16 by hand);
    - "mixed_bfloat16" on a CPU-only run whose CPU has native bfloat16 (`cpu_bf16_flags`):
      the scratch recipe's train step is faster in it (benchmarks/precision_step.py);
    - "float32" on any other CPU (emulated bfloat16 is slower than float32).
    Any other value is a policy and is returned as it is.

    Args:
        precision: "auto" or a Keras policy name ("float32", "mixed_float16", ...).
        gpus: the number of visible GPUs; None counts them (imports TensorFlow).
        tpu: the run trains on a TPU (`--strategy=tpu`).
        cpuinfo: as in `cpu_bf16_flags`.

    Returns:
        (policy, reason): e.g. ("mixed_bfloat16", "auto: the CPU has AVX512_BF16, AMX_BF16").

    Raises:
        ValueError: `precision` is not a string.
    """
    if not isinstance(precision, str) or not precision:
        raise ValueError(f"precision must be 'auto' or a Keras policy name, got {precision!r}")
    if precision != AUTO:
        return precision, "as requested"
    if tpu:
        return "float32", "auto: a TPU run keeps float32 (pass --precision=mixed_bfloat16)"
    gpus = _count_gpus() if gpus is None else gpus
    if gpus:
        return "float32", (f"auto: {gpus} GPU{'s' if gpus > 1 else ''} present, float32 as "
                           "before (pass --precision=mixed_float16 for GPU mixed precision)")
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return "mixed_bfloat16", f"auto: the CPU has {', '.join(f.upper() for f in flags)}"
    return "float32", "auto: the CPU has no native bfloat16 (AVX512_BF16 or AMX_BF16)"
