"""gpt3d.cpuinfo reads cpu0's block of /proc/cpuinfo."""
from gpt3d.cpuinfo import CpuInfo, cpu_info

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
cpu MHz\t\t: 2596.102
flags\t\t: fpu avx2 fma avx512f avx512_bf16

processor\t: 1
vendor_id\t: SomeoneElse
cpu family\t: 6
flags\t\t: fpu
"""


def test_reads_cpu0(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_info(str(path)) == CpuInfo(frozenset({"fpu", "avx2", "fma", "avx512f", "avx512_bf16"}), 2596.102,
                                          "AMD EPYC", "AuthenticAMD", 26)


def test_missing_file_gives_empty_fields(tmp_path):
    assert cpu_info(str(tmp_path / "absent")) == CpuInfo(frozenset(), 0.0, "unknown CPU", "", 0)
