"""The CPU a `target: onnxruntime` model is compiled for: its instruction set, as ONNX Runtime's
integer kernels (MLAS) see it.

MLAS picks its uint8 x int8 (U8S8) GEMM and convolution kernels by CPUID at session start, and the
kernels differ in more than speed:

- `avx2`, `avx512` (AVX-512 without VNNI: Skylake-SP): `vpmaddubsw` multiplies uint8 by int8 and adds
  each adjacent pair of products into int16 *with saturation*. A pair saturates once
  |w1| + |w2| > 32767 / 255 = 128.5, which full 8-bit weights (up to 127) reach: the int32 sums come
  out wrong (measured on a Zen 2 EPYC and in emulation: off by up to 663,715 of 1.71 million).
  Weights of at most 64 in magnitude (7 bits) never saturate: 2 x 255 x 64 = 32640.
- `avx_vnni`, `avx512_vnni`, `amx`: `vpdpbusd` (and AMX's tile multiply) add the products in int32;
  nothing saturates, full 8-bit weights are exact.
- `arm64`: NEON kernels widen to int16 before they multiply (or use the dot-product instructions);
  nothing saturates.

`auto` means the machine that compiles, unless the environment variable `TAO_QC_CPU` names an
instruction set: then `auto` means that one (a build machine compiling for the CPUs it deploys to,
and the test suite, which compiles for one named CPU whatever machine runs it). ONNX Runtime exposes
none of this, so the instruction set is read the way MLAS reads it: CPUID and the OS-enabled register
state (XCR0), through `cpuid_native` (which, unlike /proc/cpuinfo, also answers truthfully inside an
emulator that models another CPU), with /proc/cpuinfo's flags where that module is missing.
`this_machine()` is always the machine itself: what its kernels compute does not follow the variable.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tao_qc.errors import InputError

ISAS = ("avx2", "avx512", "avx_vnni", "avx512_vnni", "amx", "arm64")
CPU_SETTINGS = ("auto", *ISAS)
# Instruction sets whose U8S8 kernels add product pairs in saturating int16.
SATURATING_ISAS = frozenset({"avx2", "avx512"})
# The largest int8 weight magnitude whose pairs cannot saturate int16 against uint8 inputs up to 255.
SAFE_WEIGHT_MAGNITUDE = 64
FULL_WEIGHT_MAGNITUDE = 127
METADATA_KEY = "tao_qc.cpu"
# What `cpu: auto` means where it is set (and not empty): one of ISAS.
ENVIRONMENT_VARIABLE = "TAO_QC_CPU"


@dataclass(frozen=True)
class CpuTarget:
    """The instruction set a model is compiled for, and where that came from."""

    isa: str
    source: str  # "spec" (named in the spec), "detected" (auto: this machine) or "environment" (auto: TAO_QC_CPU)
    model_name: str | None = None  # the CPU's brand string, where detected

    @property
    def pairs_saturate(self) -> bool:
        """Whether ORT's U8S8 kernels on this instruction set saturate full 8-bit weight pairs."""
        return self.isa in SATURATING_ISAS

    @property
    def weight_magnitude(self) -> int:
        """The largest int8 weight the placement may store for this instruction set."""
        return SAFE_WEIGHT_MAGNITUDE if self.pairs_saturate else FULL_WEIGHT_MAGNITUDE

    @property
    def weight_bits(self) -> int:
        return 7 if self.pairs_saturate else 8

    def describe(self) -> str:
        where = f"this machine: {self.model_name}" if self.source == "detected" and self.model_name else (
            "this machine" if self.source == "detected" else
            f"{ENVIRONMENT_VARIABLE}" if self.source == "environment" else "named in the spec")
        return f"{self.isa} ({where}; {self.weight_bits}-bit weights)"

    def as_dict(self) -> dict:
        return {"isa": self.isa, "source": self.source, "model": self.model_name,
                "weight_bits": self.weight_bits, "u8s8_pairs_saturate": self.pairs_saturate}


def resolve(setting: str) -> CpuTarget:
    """`quantize.onnxruntime.cpu` as a CpuTarget: `auto` is the one TAO_QC_CPU names, else this
    machine's instruction set."""
    if setting == "auto":
        return environment_target() or this_machine()
    if setting not in ISAS:
        raise ValueError(f"'{setting}' is not a CPU instruction set (valid: {', '.join(CPU_SETTINGS)})")
    return CpuTarget(setting, "spec")


def environment_target() -> CpuTarget | None:
    """The instruction set TAO_QC_CPU names for `cpu: auto`, or None where it is unset or empty."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    if value not in ISAS:
        raise InputError(f"{ENVIRONMENT_VARIABLE}={value}: not a CPU instruction set (valid: {', '.join(ISAS)}, "
                         "or unset for this machine's)")
    return CpuTarget(value, "environment")


def kernels_compute_as(target: CpuTarget | str, here: CpuTarget | None = None) -> bool:
    """Whether ORT's integer kernels on this machine compute the integers they compute on `target`'s
    CPU for a model compiled for it. They do unless this CPU saturates int16 pairs and the model holds
    the full 8-bit weights of a CPU that does not (the 17-31-column remainder of AMX is fitted away
    for every target: fit-ort-integer-kernels)."""
    isa = target.isa if isinstance(target, CpuTarget) else target
    here = here or this_machine()
    return not (here.pairs_saturate and isa not in SATURATING_ISAS)


@lru_cache(maxsize=1)
def this_machine() -> CpuTarget:
    """The instruction set ORT's integer kernels use on the machine running this process."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return CpuTarget("arm64", "detected", _proc_cpuinfo_field("model name") or platform.processor() or None)
    try:
        import cpuid_native
    except ImportError:
        return CpuTarget(_isa_from_flags(_proc_cpuinfo_flags()), "detected", _proc_cpuinfo_field("model name"))
    return CpuTarget(_isa_from_cpuid(cpuid_native), "detected", _brand(cpuid_native))


def _bit(value: int, bit: int) -> bool:
    return bool(value >> bit & 1)


def _isa_from_cpuid(cpuid_native) -> str:
    def leaf(eax: int, ecx: int = 0) -> tuple[int, int, int, int]:
        _, a, b, c, d = cpuid_native.get_cpuid_count(eax, ecx)
        return a, b, c, d

    max_leaf = leaf(0)[0]
    _, _, ecx1, _ = leaf(1)
    if not (_bit(ecx1, 27) and _bit(ecx1, 28)):  # OSXSAVE and AVX: below AVX2, conservatively its rule
        return "avx2"
    xcr0 = cpuid_native.xgetbv(0)
    ymm = xcr0 & 0x6 == 0x6
    zmm = ymm and xcr0 & 0xE0 == 0xE0
    tiles = xcr0 & 0x60000 == 0x60000
    if max_leaf < 7:
        return "avx2"
    _, ebx7, ecx7, edx7 = leaf(7)
    eax71 = leaf(7, 1)[0]
    avx512 = zmm and _bit(ebx7, 16) and _bit(ebx7, 30)  # AVX512F, AVX512BW
    if avx512 and tiles and _bit(edx7, 24) and _bit(edx7, 25):  # AMX-TILE, AMX-INT8
        return "amx"
    if avx512 and _bit(ecx7, 11):  # AVX512_VNNI
        return "avx512_vnni"
    if avx512:
        return "avx512"
    if ymm and _bit(eax71, 4):  # AVX-VNNI
        return "avx_vnni"
    return "avx2"


def _isa_from_flags(flags: set[str]) -> str:
    avx512 = {"avx512f", "avx512bw"} <= flags
    if avx512 and {"amx_tile", "amx_int8"} <= flags:
        return "amx"
    if avx512 and "avx512_vnni" in flags:
        return "avx512_vnni"
    if avx512:
        return "avx512"
    if "avx_vnni" in flags:
        return "avx_vnni"
    return "avx2"


def _brand(cpuid_native) -> str | None:
    if cpuid_native.get_cpuid_count(0x80000000, 0)[1] < 0x80000004:
        return None
    raw = b"".join(
        b"".join(register.to_bytes(4, "little") for register in cpuid_native.get_cpuid_count(leaf, 0)[1:])
        for leaf in (0x80000002, 0x80000003, 0x80000004)
    )
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() or None


def _proc_cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _proc_cpuinfo_field(name: str) -> str | None:
    for line in _proc_cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip() or None
    return None


def _proc_cpuinfo_flags() -> set[str]:
    flags = _proc_cpuinfo_field("flags") or ""
    return set(flags.split())


def compiled_for(metadata: dict[str, str]) -> str | None:
    """The instruction set a model's `tao_qc.cpu` metadata names, or None."""
    value = metadata.get(METADATA_KEY)
    return value if value in ISAS else None


def mismatch(model_isa: str | None, here: CpuTarget | None = None) -> str | None:
    """Why a model compiled for `model_isa` computes wrong integers on this machine, or None."""
    if model_isa is None:
        return None
    here = here or this_machine()
    if here.pairs_saturate and model_isa not in SATURATING_ISAS:
        return (f"the model was compiled for {model_isa} (full 8-bit weights), but this CPU is {here.isa}, where ONNX "
                "Runtime's U8S8 integer kernels saturate 8-bit weight pairs: its outputs here are wrong; compile it "
                f"again with quantize.onnxruntime.cpu: {here.isa} (or auto on this machine)")
    return None
