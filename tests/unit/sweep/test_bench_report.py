"""`make bench`'s report from Snakemake benchmark files, including the `NA` rows Snakemake writes on macOS."""

from pathlib import Path

from sd3coreml.sweep import bench_report, summary

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# Recorded from Snakemake 9.27.1 here, a job holding 50 MB for 2.5 s: as it ran, and with psutil's
# Process.io_counters removed, as on macOS (psutil has none there), which leaves every memory column NA.
LINUX_ROW = "2.75\t0:00:02\t64.09\t68.12\t54.71\t55.60\t0.00\t0.00\t0.00\t0.05\n"
MACOS_ROW = "2.80\t0:00:02\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n"


def write_tsv(path: Path, row: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + row)
    return path


def test_na_memory_is_unknown_never_zero_and_wall_time_is_kept(tmp_path):
    write_tsv(tmp_path / "benchmarks" / "mmdit" / "blocks0-4.tsv", MACOS_ROW)
    write_tsv(tmp_path / "benchmarks" / "vae" / "VAEDecoder.tsv", LINUX_ROW)
    rows = bench_report.read_benchmarks(tmp_path / "benchmarks")
    assert rows == [
        {"rule": "mmdit", "job": "blocks0-4", "wall_s": 2.8, "max_rss_mib": None},
        {"rule": "vae", "job": "VAEDecoder", "wall_s": 2.75, "max_rss_mib": 64.09},
    ]
    assert bench_report.rule_table(rows)[2:] == ["| mmdit | 1 | 2.8 | 2.8 | unknown |", "| vae | 1 | 2.8 | 2.8 | 64 |"]
    assert bench_report.largest_rss_line(rows) == (
        "- largest job max_rss: 64 MiB; 1 of 2 jobs unknown (Snakemake writes NA on macOS, "
        "and anywhere for a job that ends before its first sample)"
    )
    # The sweep's summary reads only the wall time of the same files.
    assert summary.job_seconds(str(tmp_path / "benchmarks" / "mmdit" / "blocks0-4.tsv")) == 2.8
    assert summary.job_seconds(str(tmp_path / "benchmarks" / "none.tsv")) is None


def test_a_report_from_a_mac_build_says_the_memory_is_unknown(tmp_path):
    root = tmp_path / "bench"
    folder = root / "coremlsd3_4step_packages"
    folder.mkdir(parents=True)
    (folder / "TextEncoder.bin").write_bytes(b"x" * 2048)
    write_tsv(root / "benchmarks" / "mmdit" / "blocks0-4.tsv", MACOS_ROW)
    write_tsv(root / "benchmarks" / "compress" / "text_encoders" / "TextEncoder2.palettize.tsv", MACOS_ROW)
    write_tsv(root / "benchmarks" / "end_to_end" / "coremlsd3_4step_packages.tsv", MACOS_ROW)
    report = root / "reports" / folder.name / "end_to_end.json"
    report.parent.mkdir(parents=True)
    report.write_text(
        '{"steps": 4, "prompt": "a cat", "seed": 0, "final_latent_psnr_db": 41.2, "min_psnr_db": 30, "passed": true}'
    )
    out = tmp_path / "PERFORMANCE.md"

    bench_report.write_report(root, folder, 100.0, "make bench", out)

    text = out.read_text()
    note = "unknown (Snakemake writes NA on macOS, and anywhere for a job that ends before its first sample)"
    assert f"- largest job max_rss: {note}" in text
    assert "| largest job max_rss | unknown | 4967 MiB | unknown |" in text
    assert f"- job wall time 3 s, max_rss {note}" in text
    assert "| mmdit | blocks0-4 | 2.8 | unknown |" in text
    assert "| CLIP-G 6-bit palettization, job wall | 3 s | 40 s | yes |" in text
