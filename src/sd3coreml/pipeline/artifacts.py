"""Every artifact, log and benchmark path under `output_root`, named once.

An artifact's path names what determines its content (model, conversion target, latent size,
block range, precision), never its place in one layout, so layouts that share a block range
share the file. Rules take their output, log and benchmark patterns (Snakemake wildcards)
from here; the plan, the sweep, cleanup, the benchmark report and the tests take concrete
paths from the same functions.
"""

from dataclasses import dataclass
from pathlib import Path

from sd3coreml.compress.settings import entry_compression, quantization_slug
from sd3coreml.contract import CONDITIONING, STAGE, TEXT_ENCODERS, TOKENIZER_FILES, VAE_DECODER
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import CONDITIONING_PREFIXES, INPUT_STAGE_PREFIXES, block_range_prefixes
from sd3coreml.pipeline.plan import BlockRange

# Each converted piece under output_root, as a wildcard pattern; `.{precision}.mlpackage` ends it.
PIECES = {
    "conditioning": "mmdit/{model}/{target}/conditioning",
    "input_stage": "mmdit/{model}/{target}/latent{height}x{width}/input",
    "block_range": "mmdit/{model}/{target}/latent{height}x{width}/blocks{start}-{end}{head}",
    "text_encoder": "text_encoders/{target}/{encoder}",
    "vae_decoder": "vae/{target}/latent{height}x{width}/VAEDecoder",
}
FP16 = "fp16"
# The synthetic inputs under output_root: the file name says which preset, distribution and seed.
SYNTHETIC = {
    "transformer": "checkpoints/{preset}{heavy}-seed{seed}",
    "components": "checkpoints/{preset}-components-seed{seed}",
}
SYNTHETIC_NAME = {
    "transformer": r"(?P<preset>[a-z0-9.-]+?)(?P<heavy>-heavy-tailed)?-seed(?P<seed>\d+)\.safetensors",
    "components": r"(?P<preset>[a-z0-9.-]+?)-components-seed(?P<seed>\d+)",
}
# The top folders of output_root that hold only what jobs generate (what cleanup may remove).
GENERATED = ("mmdit", "text_encoders", "vae", "tokenizer", "compiled", "fidelity", "device", "reports",
             "checkpoints/normalized")  # fmt: skip
FOLDER_PREFIX = "coremlsd3_"
LOGS, BENCHMARKS = "logs", "benchmarks"


def sums_path(root: str, folder: str) -> str:
    return f"{root}/{folder}/SHA256SUMS"


def build_record_path(root: str, folder: str) -> str:
    """Host and time facts of a folder's build: outside the folder, so the folder stays reproducible."""
    return f"{root}/reports/{folder}/build_host.json"


def log_path(root: str, job: str) -> str:
    return f"{root}/{LOGS}/{job}.log"


def handoff_compiled(root: str, key: str, deployment_target: str, name: str = "{name}") -> str:
    """A package of a hand-off's packages folder, compiled (config/handoff.yaml)."""
    return f"{root}/compiled/handoff/{key}/ios{deployment_target}/{name}.mlmodelc"


def folder_name(model: str, kind: str) -> str:
    """`coremlsd3_4step_packages` (kind `packages`) or the app's `coremlsd3_4step` (kind `app`)."""
    return f"{FOLDER_PREFIX}{model}" + ("_packages" if kind == "packages" else "")


def latent_slug(latent_size) -> str:
    return f"latent{latent_size[0]}x{latent_size[1]}"


def mmdit_piece_prefixes(name: str) -> tuple[str, ...] | None:
    """The checkpoint tensors of an MMDiT piece, from its artifact name (None: unknown, count all)."""
    if name == Path(PIECES["conditioning"]).name:
        return CONDITIONING_PREFIXES
    if name == Path(PIECES["input_stage"]).name:
        return INPUT_STAGE_PREFIXES
    block_range = BlockRange.from_slug(name)
    return block_range_prefixes(block_range.start, block_range.end, block_range.has_head) if block_range else None


@dataclass(frozen=True)
class Artifacts:
    """The paths of one config's build: `root` (output_root), its conversion and compiler targets."""

    root: str
    target: str
    latent: str
    deployment_target: str
    compression: dict

    @classmethod
    def of(cls, config: dict) -> "Artifacts":
        return cls(
            config["output_root"].rstrip("/"),
            config["conversion_target"],
            latent_slug(config["latent_size"]),
            config["compiler"]["deployment_target"],
            config["compression"],
        )

    # Patterns of the rules' outputs, logs and benchmarks.
    def piece(self, piece: str, precision: str = "{precision}") -> str:
        return f"{self.root}/{PIECES[piece]}.{precision}.mlpackage"

    def piece_stem(self, piece: str) -> str:
        return f"{self.root}/{PIECES[piece]}"

    def synthetic(self, kind: str, suffix: str = "") -> str:
        return f"{self.root}/{SYNTHETIC[kind]}{suffix}"

    def compressed_pattern(self) -> str:
        return f"{self.root}/{{path}}.{{compression}}.mlpackage"

    def measurement_pattern(self, piece: str) -> str:
        return f"{self.root}/fidelity/{PIECES[piece]}.{{precision}}.json"

    def device_pattern(self) -> str:
        return f"{self.root}/device/{{path}}.json"

    def package_pattern(self, precision: str = "") -> str:
        """Any package under output_root by its path `{path}`: what compiling, compressing and profiling read."""
        return f"{self.root}/{{path}}{'.' + precision if precision else ''}.mlpackage"

    def compiled_pattern(self) -> str:
        return f"{self.root}/compiled/ios{{deployment_target}}/{{path}}.mlmodelc"

    def log(self, job: str) -> str:
        """A job's log: `job` is its path under logs/, e.g. `mmdit/{model}/{target}/conditioning`."""
        return log_path(self.root, job)

    def benchmark(self, job: str) -> str:
        return f"{self.root}/{BENCHMARKS}/{job}.tsv"

    # Concrete paths.
    def relative(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def compressed(self, stem: str, settings: dict) -> str:
        return f"{stem}.{quantization_slug(settings)}.mlpackage"

    def compression_of(self, entry: str, family: str) -> dict:
        return entry_compression(self.compression, entry, family)

    def mmdit_dir(self, model: str) -> str:
        return f"{self.root}/mmdit/{model}/{self.target}"

    def stage_stems(self, model: str, ranges) -> list[str]:
        """Stage0..N in app order, without precision; block ranges are named by content, not by index."""
        stem = f"{self.mmdit_dir(model)}/{self.latent}"
        return [f"{stem}/input", *(f"{stem}/{block_range.slug}" for block_range in ranges)]

    def folder_packages(self, model: str, ranges) -> dict[str, str]:
        """Contract name (without suffix) -> package path, for one model's folder."""
        entries = {
            name: self.compressed(f"{self.root}/text_encoders/{self.target}/{name}", self.compression_of(name, "text_encoders"))
            for name in TEXT_ENCODERS
        }  # fmt: skip
        entries[VAE_DECODER] = f"{self.root}/vae/{self.target}/{self.latent}/{VAE_DECODER}.{FP16}.mlpackage"
        conditioning = self.compression_of(CONDITIONING, "mmdit")
        entries[CONDITIONING] = self.compressed(f"{self.mmdit_dir(model)}/conditioning", conditioning)
        for index, stem in enumerate(self.stage_stems(model, ranges)):
            entry = STAGE.format(index=index)
            entries[entry] = self.compressed(stem, self.compression_of(entry, "mmdit"))
        return entries

    def folder_entries(self, model: str, ranges, kind: str) -> dict[str, str]:
        """A folder's inputs by entry name: the packages (`packages`) or their compiled twins (`app`),
        and the tokenizer files."""
        packages = self.folder_packages(model, ranges)
        if kind == "packages":
            entries = {f"{name}.mlpackage": path for name, path in packages.items()}
        else:
            entries = {f"{name}.mlmodelc": self.compiled(path) for name, path in packages.items()}
        return {**entries, **self.tokenizer_files()}

    def compiled_from(self, model: str, ranges) -> dict[str, str]:
        """An app folder's compiled entry -> the package it is compiled from."""
        return {f"{name}.mlmodelc": path for name, path in self.folder_packages(model, ranges).items()}

    def measurements(self, model: str, ranges) -> dict[str, str]:
        """Contract name -> the fidelity figures of the package a model's folder holds under it."""
        return {name: self.measurement(package) for name, package in self.folder_packages(model, ranges).items()}

    def tokenizer_files(self) -> dict[str, str]:
        return {name: f"{self.root}/tokenizer/{name}" for name in TOKENIZER_FILES}

    def compiled(self, package: str) -> str:
        relative = Path(self.relative(package)).with_suffix(".mlmodelc").as_posix()
        return f"{self.root}/compiled/ios{self.deployment_target}/{relative}"

    def measurement(self, package: str) -> str:
        """Where a package's fidelity figures go: its path under fidelity/, precision kept."""
        return f"{self.root}/fidelity/{Path(self.relative(package)).with_suffix('').as_posix()}.json"

    def device_profile(self, package: str) -> str:
        """Where Core ML's measurement of a package goes (macOS only)."""
        return f"{self.root}/device/{Path(self.relative(package)).with_suffix('').as_posix()}.json"

    def folder(self, model: str, kind: str) -> str:
        return f"{self.root}/{folder_name(model, kind)}"

    def sums(self, model: str, kind: str) -> str:
        return sums_path(self.root, folder_name(model, kind))

    def report(self, model: str, name: str) -> str:
        """A packages folder's report (`fidelity.json`, `end_to_end.png`, ...), outside the folder."""
        return f"{self.root}/reports/{folder_name(model, 'packages')}/{name}"

    def build_record(self, folder: str) -> str:
        return build_record_path(self.root, folder)

    def normalized_transformer(self, model: str) -> str:
        return f"{self.root}/checkpoints/normalized/{model}.safetensors"

    def sweep_report(self, name: str) -> str:
        return f"{self.root}/reports/sweep/{name}"

    def stage_benchmarks(self, stem: str, slug: str) -> list[str]:
        """The benchmark files of the jobs that make and measure one stage package."""
        job = self.relative(stem)
        files = [self.benchmark(job), self.benchmark(f"fidelity/{job}.{slug}")]
        return files + ([self.benchmark(f"compress/{job}.{slug}")] if slug != FP16 else [])

    def sweep_stages(self, model: str, layout, mode, on_macos: bool) -> list[dict]:
        """Stage0..N of one sweep layout under one mode, with what the summary reads of each."""
        stages = []
        for index, stem in enumerate(self.stage_stems(model, layout.ranges)):
            settings = mode.for_stage(index, layout.stage_count)
            package = self.compressed(stem, settings)
            stage = {"stage": index, "package": package, "fp16_package": f"{stem}.{FP16}.mlpackage"}
            stage["measurement"] = self.measurement(package)
            stage["benchmarks"] = self.stage_benchmarks(stem, quantization_slug(settings))
            if on_macos:
                stage["device"] = self.device_profile(package)
            stages.append(stage)
        return stages

    def sweep_rows(self, sweep, on_macos: bool) -> list[dict]:
        return [
            {"layout": layout.name, "sizes": list(layout.sizes), "mode": mode.name,
             "stages": self.sweep_stages(sweep.model, layout, mode, on_macos)}
            for layout in sweep.layouts
            for mode in sweep.modes
        ]  # fmt: skip

    def weights_to_convert(self, outputs, models: dict, components: Path) -> list:
        """The input weights of the conversions that write `outputs`: what the disk estimate is made from.

        A transformer counts by the pieces planned (its file with their tensor prefixes), so a
        sweep of one block range does not count the whole model.
        """
        relative = [self.relative(path) for path in outputs if str(path).startswith(f"{self.root}/")]
        files = []
        for key in models:
            pieces = {Path(path).name.split(".")[0] for path in relative if path.startswith(f"mmdit/{key}/")}
            files += [(models[key].weights, mmdit_piece_prefixes(piece)) for piece in sorted(pieces)]
        if any(path.startswith(("text_encoders/", "vae/")) for path in relative):
            from sd3coreml.pipeline.disk import component_weight_files

            files += component_weight_files(components)
        return files

    def sweep_inputs(self, sweep, on_macos: bool) -> dict[str, list[str]]:
        """What the sweep's summary reads: every stage package, its fp16 twin, measurement and profile."""
        stages = [stage for row in self.sweep_rows(sweep, on_macos) for stage in row["stages"]]
        return {
            "packages": sorted({stage[key] for stage in stages for key in ("package", "fp16_package")}),
            "measurements": sorted({stage["measurement"] for stage in stages}),
            "device_profiles": sorted({stage["device"] for stage in stages if "device" in stage}),
        }

    def built_folders(self, models: dict, include_packages: bool = False) -> list[str]:
        """The configured folders on disk (and the packages folders, about to be built, if asked)."""
        folders = [self.folder(model, kind) for model in models for kind in ("packages", "app")]
        built = [path for path in folders if Path(path).is_dir() or (include_packages and path.endswith("_packages"))]
        if not built:
            first = folder_name(next(iter(models)), "packages")
            raise PipelineError(
                f"{self.root}: no coremlsd3_* folder built yet; build one first, e.g. snakemake {first}"
            )
        return built
