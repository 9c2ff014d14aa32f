"""A VAE job runs in a Python that holds more than the pins: here `peft`, which diffusers imports
when it can and which imports transformers, a framework the VAE step asks coremltools not to probe.

peft and accelerate live in a test-only folder (the Makefile fills it) put on the job's
PYTHONPATH, so every other job keeps the venv's pinned set. The demo build's components
serve as the VAE weights: the session builds them anyway, where tiny components made here
would cost a few seconds more in every `make test`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from harness import REPO

EXTRA_PACKAGES = REPO / "tests" / ".extra-packages"


def test_vae_job_converts_with_peft_importable(demo_build, tmp_path):
    assert (EXTRA_PACKAGES / "peft").is_dir(), f"{EXTRA_PACKAGES} lacks peft: run `make .venv/.installed`"
    config = yaml.safe_load((demo_build / "config" / "demo.yaml").read_text())
    vae = demo_build / config["components"] / "vae"
    height, width = config["latent_size"]
    package = tmp_path / "VAEDecoder.mlpackage"
    path = os.pathsep.join(filter(None, [str(EXTRA_PACKAGES), os.environ.get("PYTHONPATH")]))
    # -X importtime lists every module the job imports, so the test sees that peft was not only
    # importable but imported by diffusers inside the job, the path that used to fail.
    command = [sys.executable, "-X", "importtime", "-m", "sd3coreml", "convert-vae-decoder", "--vae", str(vae),
               "--latent", str(height), str(width), "--target", config["conversion_target"], "--out", str(package)]  # fmt: skip
    job = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, check=False)
    failure = "\n".join(line for line in job.stderr.splitlines() if not line.startswith("import time:"))[-3000:]
    assert job.returncode == 0, failure
    assert re.search(r"^import time:.*\|\s+peft$", job.stderr, re.MULTILINE), "the job never imported peft"
    # The same weights as the session build's VAE, converted where peft is absent.
    built = demo_build / config["output_root"] / "vae" / config["conversion_target"] / f"latent{height}x{width}"
    weights = Path("Data", "com.apple.CoreML", "weights", "weight.bin")
    assert (package / weights).read_bytes() == (built / "VAEDecoder.fp16.mlpackage" / weights).read_bytes()
