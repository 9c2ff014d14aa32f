"""Every artifact, log and benchmark path under `output_root`, each spelled once.

An artifact's path names what determines its content (model, conversion target, latent size,
block range and its attention, compression setting), never its place in one layout, so layouts
that share a block range share the file. The spellings are wildcard patterns (PIECES, JOBS,
...): rules match them, and every concrete path (the plan's, the sweep's, cleanup's, the
benchmark report's, the tests') is the same pattern filled in (`fill`), so the two cannot
disagree.

Recipes made from a budget (compress/settings.py) have their own chain: the calibration inputs
a model's chain feeds its pieces (named by what determines them: prompts, steps, shift, seed,
latent size), each piece's weights analysed apart, and the recipe with its report.
"""

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from sd3coreml.compress.settings import FP16, SLUG_PATTERN, CompressionSetting, FolderCompression
from sd3coreml.contract import CONDITIONING, STAGE, TEXT_ENCODERS, TOKENIZER_FILES, VAE_DECODER
from sd3coreml.errors import PipelineError
from sd3coreml.inputs.checkpoint import CONDITIONING_PREFIXES, INPUT_STAGE_PREFIXES, block_range_prefixes
from sd3coreml.stages import ATTENTIONS, JOINT, BlockRange

LATENT = "latent{height}x{width}"
BLOCK_RANGE = "blocks{start}-{end}{head}{attention}"
HEAD = "_head"
# A block range's attention when it is not the default (joint): `blocks0-4_head.split_heads`.
ATTENTION = ".{name}"
MMDIT = "mmdit/{model}"
# Each converted piece under output_root, as a wildcard pattern; `.{precision}.mlpackage` ends it.
PIECES = {
    "conditioning": f"{MMDIT}/{{target}}/conditioning",
    "input_stage": f"{MMDIT}/{{target}}/{LATENT}/input",
    "block_range": f"{MMDIT}/{{target}}/{LATENT}/{BLOCK_RANGE}",
    "text_encoder": "text_encoders/{target}/{encoder}",
    "vae_decoder": f"vae/{{target}}/{LATENT}/VAEDecoder",
}
# A package by its piece's path `{path}` (PIECES, filled) and its compression setting's slug; what is
# made of it mirrors its path: its fidelity figures, and, by the package's own name `{package}`
# (the path and slug), Core ML's profile and its compiled twin.
PACKAGE = "{path}.{precision}.mlpackage"
MEASUREMENT = "fidelity/{path}.{precision}.json"
# A block range package whose attention is not joint, measured against its joint twin.
AGAINST_JOINT = "fidelity/{path}.{precision}.against_joint.json"
# Core ML's own fidelity figures of the same packages (macOS only): beside the executor's, so a
# Mac adds them without touching the executor's measurement.
COREML_MEASUREMENT = "coreml/{path}.{precision}.json"
ANY_PACKAGE = "{package}.mlpackage"
DEVICE_PROFILE = "device/{package}.json"
COMPILED = "compiled/ios{deployment_target}/{package}.mlmodelc"
# A budget's recipe: the calibration inputs (a folder), a piece's analysis, the recipe and its report.
# A calibration is named by what determines it: the prompts (the first hex digits of the sha256
# of their lines), the model's sampler steps and timestep shift, the seed and the latent size.
CALIBRATION = "calibration/{model}/{calibration}"
CALIBRATION_NAME = f"p{{prompts}}-steps{{steps}}-shift{{shift}}-seed{{seed}}-{LATENT}"
PROMPTS_ID_DIGITS = 8
ANALYSIS = "sensitivity/{model}/{calibration}/{piece}.per_tensor.json"
# The pieces analysed apart: the last block's analysis also holds the head's weights.
ANALYSIS_PIECES = ("conditioning", "input")
ANALYSIS_BLOCK = "block{index}"
ANALYSIS_PIECE_WILDCARD = "|".join((*ANALYSIS_PIECES, ANALYSIS_BLOCK.replace("{index}", r"\d+")))
RECIPE = "recipes/{model}/{compression}.json"
RECIPE_REPORT = "recipes/{model}/{compression}.report.json"
# ml-stable-diffusion's per-layer threshold rule at a budget recipe's bytes: a file mode to measure it by.
THRESHOLD_RECIPE = "recipes/{model}/{compression}.per_layer_threshold.json"
# The text encoders' twins: calibrated on the prompts alone (p<hex digits>), a recipe per encoder
# from one budget over both (their tensors share names), with one report.
TEXT_CALIBRATION = "calibration/text_encoders/p{prompts}"
TEXT_ANALYSIS = "sensitivity/text_encoders/p{prompts}/{encoder}.per_tensor.json"
TEXT_RECIPE = "recipes/text_encoders/{compression}/{encoder}.json"
TEXT_RECIPE_REPORT = "recipes/text_encoders/{compression}/report.json"
# The activation ranges of a package (compression `activations: int8`), over the calibration inputs
# of its first piece: `{path}` is the piece's, as a package's.
ACTIVATION_RANGES = "activations/{path}.json"
# A job's name under logs/ and benchmarks/, by what it does to which artifact.
JOBS = {
    "convert": "{path}",
    "compress": "compress/{path}.{compression}",
    "fidelity": "fidelity/{path}.{precision}",
    "against_joint": "fidelity/{path}.{precision}.against_joint",
    "fidelity_coreml": "coreml/{path}.{precision}",
    "compile": "compile/ios{deployment_target}/{package}",
    "profile": "device/{package}",
    "calibration": CALIBRATION,
    "analysis": ANALYSIS.removesuffix(".json"),
    "recipe": RECIPE.removesuffix(".json"),
    "threshold_recipe": THRESHOLD_RECIPE.removesuffix(".json"),
    "text_calibration": TEXT_CALIBRATION,
    "text_analysis": TEXT_ANALYSIS.removesuffix(".json"),
    "text_recipe": TEXT_RECIPE_REPORT.removesuffix("/report.json"),
    "activation_ranges": ACTIVATION_RANGES.removesuffix(".json"),
}
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
GENERATED = ("mmdit", "text_encoders", "vae", "tokenizer", "compiled", "fidelity", "coreml", "device", "reports",
             "checkpoints/normalized", "calibration", "sensitivity", "recipes", "activations")  # fmt: skip
FOLDER_PREFIX = "coremlsd3_"
FOLDER_KINDS = {"packages": "_packages", "app": ""}
LOGS, BENCHMARKS = "logs", "benchmarks"


def fill(pattern: str, **values) -> str:
    """`pattern` with the wildcards named in `values` filled in; the others stay wildcards."""
    return re.sub(r"\{(\w+)\}", lambda field: str(values.get(field[1], field[0])), pattern)


def job_stem(kind: str, **values) -> str:
    """The log and benchmark name of a `kind` job (JOBS), its wildcards filled from `values`."""
    return fill(JOBS[kind], **values)


def attention_field(attention: str) -> str:
    """The `{attention}` of a block range's path: empty for the default, so its paths never change."""
    return "" if attention == JOINT else fill(ATTENTION, name=attention)


ATTENTION_FIELDS = {attention_field(attention): attention for attention in ATTENTIONS}
# The `{attention}` wildcard: empty (joint) or a variant, the field of an attention other than joint.
ATTENTION_VARIANTS = "|".join(re.escape(field) for field in ATTENTION_FIELDS if field)
ATTENTION_WILDCARD = f"({ATTENTION_VARIANTS})?"


def block_range_fields(block_range: BlockRange) -> dict:
    return {"start": block_range.start, "end": block_range.end, "head": HEAD if block_range.has_head else "",
            "attention": attention_field(block_range.attention)}  # fmt: skip


def block_range_name(block_range: BlockRange) -> str:
    """`blocks4-8`, `blocks20-24_head` for the range that ends the transformer, `blocks4-8.split_heads`."""
    return fill(BLOCK_RANGE, **block_range_fields(block_range))


def block_range_of(name: str) -> BlockRange | None:
    """The range an artifact name holds (`blocks4-8`, `blocks20-24_head.split_heads`), or None."""
    pattern = fill(re.escape(BLOCK_RANGE).replace(r"\{", "{").replace(r"\}", "}"),
                   start=r"(\d+)", end=r"(\d+)", head=f"({HEAD})?", attention=ATTENTION_WILDCARD)  # fmt: skip
    named = re.fullmatch(pattern, name)
    if not named:
        return None
    return BlockRange(int(named[1]), int(named[2]), bool(named[3]), ATTENTION_FIELDS[named[4] or ""])


def split_package(name: str) -> tuple[str, str]:
    """(`<stem>`, `<slug>`) of a package's `<stem>.<slug>`: a slug may hold a dot (`recipe-bpw4.5`)."""
    named = re.fullmatch(rf"(.+)\.({FP16}|{SLUG_PATTERN})", name)
    return (named[1], named[2]) if named else tuple(name.rsplit(".", 1))


def setting_of_package(package) -> CompressionSetting:
    """The compression setting a package's name carries (`<stem>.<slug>.mlpackage`)."""
    return CompressionSetting.from_slug(split_package(Path(package).name.removesuffix(".mlpackage"))[-1])


def prompts_id(prompts: list[str]) -> str:
    """The first hex digits of the sha256 of the prompts' lines: what names a prompt set."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:PROMPTS_ID_DIGITS]


def calibration_name(prompts: list[str], steps: int, shift: float, seed: int, latent) -> str:
    """`p1f0e3a9c-steps4-shift3-seed0-latent64x64`: what determines a model's calibration inputs."""
    return fill(CALIBRATION_NAME, prompts=prompts_id(prompts), steps=steps, shift=f"{shift:g}", seed=seed, height=latent[0],
                width=latent[1])  # fmt: skip


def analysis_pieces(depth: int) -> list[str]:
    """The analysis pieces of an MMDiT of `depth` joint blocks."""
    return [*ANALYSIS_PIECES, *(fill(ANALYSIS_BLOCK, index=index) for index in range(depth))]


def check_outside_generated(path: str, root: str, key: str) -> None:
    """A file a user gives (a recipe) lies outside the families under `root` that cleanup empties."""
    parts = Path(path).parts
    for family in GENERATED:
        if parts[: len(Path(root, family).parts)] == Path(root, family).parts:
            raise PipelineError(
                f"config key '{key}' ({path}) lies in {root}/{family}/, which holds only what jobs make (cleanup "
                "removes the rest); keep the file outside output_root's generated folders, e.g. recipes/"
            )


def piece_model(path: str) -> str:
    """The model of an MMDiT piece's path (`{path}` of a package)."""
    named = re.match(fill(MMDIT, model="([^/]+)") + "/", path)
    if not named:
        raise PipelineError(f"{path}: neither an MMDiT piece nor a text encoder; recipes compress those only")
    return named[1]


def text_encoder_of(path: str) -> str | None:
    """The folder entry of a text encoder piece's path (`{path}` of a package), else None."""
    named = re.fullmatch(fill(PIECES["text_encoder"], target="[^/]+", encoder="([^/]+)"), path)
    return named[1] if named and named[1] in TEXT_ENCODERS else None


def calibration_piece(path: str) -> str:
    """The calibration piece whose inputs a package of piece `path` receives: a text encoder's
    entry, `conditioning`, `input`, or `block<start>` of a block range."""
    encoder = text_encoder_of(path)
    if encoder:
        return encoder
    piece_model(path)
    name = path.rsplit("/", 1)[-1]
    if name in ANALYSIS_PIECES:
        return name
    block_range = block_range_of(name)
    if block_range is None:
        raise PipelineError(f"{path}: no piece with calibration inputs (an MMDiT piece or a text encoder)")
    return fill(ANALYSIS_BLOCK, index=block_range.start)


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
    return f"{FOLDER_PREFIX}{model}{FOLDER_KINDS[kind]}"


def is_folder_name(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


def mmdit_piece_prefixes(name: str) -> tuple[str, ...] | None:
    """The checkpoint tensors of an MMDiT piece, from its artifact name (None: unknown, count all)."""
    if name == Path(PIECES["conditioning"]).name:
        return CONDITIONING_PREFIXES
    if name == Path(PIECES["input_stage"]).name:
        return INPUT_STAGE_PREFIXES
    block_range = block_range_of(name)
    return block_range_prefixes(block_range.start, block_range.end, block_range.has_head) if block_range else None


@dataclass(frozen=True)
class Artifacts:
    """The paths of one config's build: `root` (output_root), its conversion and compiler targets."""

    root: str
    target: str
    latent: tuple[int, int]
    deployment_target: str
    compression: FolderCompression

    @classmethod
    def of(cls, config: dict) -> "Artifacts":
        return cls(
            config["output_root"].rstrip("/"),
            config["conversion_target"],
            tuple(config["latent_size"]),
            config["compiler"]["deployment_target"],
            FolderCompression.from_config(config["compression"]),
        )

    def fields(self, **values) -> dict:
        """The wildcards one config fixes (target, latent size), with `values`."""
        return {"target": self.target, "height": self.latent[0], "width": self.latent[1], **values}

    # Patterns of the rules' outputs, logs and benchmarks.
    def under_root(self, pattern: str) -> str:
        return f"{self.root}/{pattern}"

    def piece(self, piece: str, precision: str = "{precision}") -> str:
        return self.under_root(fill(PACKAGE, path=PIECES[piece], precision=precision))

    def piece_stem(self, piece: str) -> str:
        return self.under_root(PIECES[piece])

    def synthetic(self, kind: str, suffix: str = "") -> str:
        return self.under_root(f"{SYNTHETIC[kind]}{suffix}")

    def compressed_pattern(self) -> str:
        return self.under_root(fill(PACKAGE, precision="{compression}"))

    def measurement_pattern(self, piece: str) -> str:
        return self.under_root(fill(MEASUREMENT, path=PIECES[piece]))

    def against_joint_pattern(self) -> str:
        return self.under_root(fill(AGAINST_JOINT, path=PIECES["block_range"]))

    def joint_twin_pattern(self, precision: str = "{precision}") -> str:
        """A block range's package with the attention left out: what a split package is held against."""
        return fill(self.piece("block_range", precision), attention=attention_field(JOINT))

    def coreml_measurement_pattern(self, piece: str) -> str:
        return self.under_root(fill(COREML_MEASUREMENT, path=PIECES[piece]))

    def device_pattern(self) -> str:
        return self.under_root(DEVICE_PROFILE)

    def package_pattern(self, precision: str | None = None) -> str:
        """A package under output_root: by its piece's `{path}` and `precision` (compressing reads the
        fp16 one), or by its whole name `{package}` (compiling and profiling read any)."""
        return self.under_root(fill(PACKAGE, precision=precision) if precision else ANY_PACKAGE)

    def compiled_pattern(self) -> str:
        return self.under_root(COMPILED)

    def calibration(self, model: str = "{model}", name: str = "{calibration}") -> str:
        return self.under_root(fill(CALIBRATION, model=model, calibration=name))

    def analysis(self, model: str = "{model}", name: str = "{calibration}", piece: str = "{piece}") -> str:
        return self.under_root(fill(ANALYSIS, model=model, calibration=name, piece=piece))

    def recipe(self, model: str = "{model}", slug: str = "{compression}", report: bool = False) -> str:
        """A budget's recipe made for `model`, or (`report`) what its job reports of it."""
        return self.under_root(fill(RECIPE_REPORT if report else RECIPE, model=model, compression=slug))

    def threshold_recipe(self, model: str = "{model}", slug: str = "{compression}") -> str:
        """The per-layer threshold rule's recipe at the bytes of the budget recipe `slug` for `model`."""
        return self.under_root(fill(THRESHOLD_RECIPE, model=model, compression=slug))

    def text_calibration(self, prompts: str = "{prompts}") -> str:
        return self.under_root(fill(TEXT_CALIBRATION, prompts=prompts))

    def text_analysis(self, prompts: str = "{prompts}", encoder: str = "{encoder}") -> str:
        return self.under_root(fill(TEXT_ANALYSIS, prompts=prompts, encoder=encoder))

    def text_recipe(self, slug: str = "{compression}", encoder: str = "{encoder}", report: bool = False) -> str:
        """A budget's recipe made for text encoder `encoder`, or (`report`) what its job reports of both."""
        if report:
            return self.under_root(fill(TEXT_RECIPE_REPORT, compression=slug))
        return self.under_root(fill(TEXT_RECIPE, compression=slug, encoder=encoder))

    def activation_ranges(self, path: str = "{path}") -> str:
        return self.under_root(fill(ACTIVATION_RANGES, path=path))

    def calibration_name(self, sensitivity: dict, steps: int, shift: float) -> str:
        """The calibration of a model sampled in `steps` at `shift`, under config `sensitivity`."""
        return calibration_name(sensitivity["prompts"], steps, shift, sensitivity["seed"], self.latent)

    def recipe_for_package(self, path: str, setting: CompressionSetting) -> CompressionSetting:
        """A recipe package's setting with the file its job reads: a budget's is the recipe made for the
        model of the package's piece `path`."""
        if setting.budget is None:
            return setting
        encoder = text_encoder_of(path)
        if encoder:
            return replace(setting, file=self.text_recipe(setting.weights_slug, encoder))
        return replace(setting, file=self.recipe(piece_model(path), setting.weights_slug))

    def generated_recipes(self, model: str, ranges) -> dict[str, str]:
        """Label -> file of each budget's recipe a model's folder packages are compressed by (recorded in
        its manifest): the slug for the transformer's, `<slug> <entry>` for a text encoder's; none
        for other settings."""
        entries = [CONDITIONING, *(STAGE.format(index=index) for index in range(len(ranges) + 1))]
        budgets = {setting.weights_slug for entry in entries if (setting := self.compression_of(entry, "mmdit")).budget}
        recipes = {slug: self.recipe(model, slug) for slug in sorted(budgets)}
        for entry in TEXT_ENCODERS:
            setting = self.compression_of(entry, "text_encoders")
            if setting.budget:
                recipes[f"{setting.weights_slug} {entry}"] = self.text_recipe(setting.weights_slug, entry)
        return dict(sorted(recipes.items()))

    def job_log(self, kind: str, **values) -> str:
        return self.log(job_stem(kind, **values))

    def job_benchmark(self, kind: str, **values) -> str:
        return self.benchmark(job_stem(kind, **values))

    def log(self, job: str) -> str:
        """A job's log: `job` is its path under logs/, e.g. `mmdit/{model}/{target}/conditioning`."""
        return log_path(self.root, job)

    def benchmark(self, job: str) -> str:
        return f"{self.root}/{BENCHMARKS}/{job}.tsv"

    # Concrete paths.
    def relative(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def package_parts(self, package: str) -> dict:
        """`path` (the piece's, relative) and `precision` (the slug) of a package under output_root."""
        path, precision = split_package(self.relative(package).removesuffix(".mlpackage"))
        return {"path": path, "precision": precision}

    def compressed(self, stem: str, setting: CompressionSetting) -> str:
        return self.under_root(fill(PACKAGE, path=self.relative(stem), precision=setting.slug))

    def compression_of(self, entry: str, family: str) -> CompressionSetting:
        return self.compression.for_entry(entry, family)

    def stem(self, piece: str, **values) -> str:
        """A piece's path without its precision, e.g. stem("block_range", model=..., start=0, end=4, head="")."""
        return fill(self.piece_stem(piece), **self.fields(**values))

    def stage_stems(self, model: str, ranges) -> list[str]:
        """Stage0..N in app order, without precision; block ranges are named by content, not by index."""
        blocks = [self.stem("block_range", model=model, **block_range_fields(r)) for r in ranges]
        return [self.stem("input_stage", model=model), *blocks]

    def folder_packages(self, model: str, ranges) -> dict[str, str]:
        """Contract name (without suffix) -> package path, for one model's folder."""
        entries = {
            name: self.compressed(self.stem("text_encoder", encoder=name), self.compression_of(name, "text_encoders"))
            for name in TEXT_ENCODERS
        }  # fmt: skip
        entries[VAE_DECODER] = self.compressed(self.stem("vae_decoder"), CompressionSetting())
        conditioning = self.compression_of(CONDITIONING, "mmdit")
        entries[CONDITIONING] = self.compressed(self.stem("conditioning", model=model), conditioning)
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

    def coreml_measurements(self, model: str, ranges) -> dict[str, str]:
        """Contract name -> Core ML's own fidelity figures of that package (macOS only)."""
        packages = self.folder_packages(model, ranges).items()
        return {name: self.under_root(fill(COREML_MEASUREMENT, **self.package_parts(path))) for name, path in packages}

    def tokenizer_files(self) -> dict[str, str]:
        return {name: f"{self.root}/tokenizer/{name}" for name in TOKENIZER_FILES}

    def compiled(self, package: str) -> str:
        name = self.relative(package).removesuffix(".mlpackage")
        return self.under_root(fill(COMPILED, deployment_target=self.deployment_target, package=name))

    def measurement(self, package: str) -> str:
        """Where a package's fidelity figures go: its path under fidelity/, precision kept."""
        return self.under_root(fill(MEASUREMENT, **self.package_parts(package)))

    def against_joint(self, package: str) -> str:
        """Where a split-attention package's figures against its joint twin go."""
        return self.under_root(fill(AGAINST_JOINT, **self.package_parts(package)))

    def attention_checks(self, model: str, ranges) -> list[str]:
        """The figures against their joint twins of a model's folder packages whose attention is not joint."""
        packages = self.folder_packages(model, ranges)
        return [
            self.against_joint(packages[STAGE.format(index=index)])
            for index, block_range in enumerate(ranges, 1)
            if block_range.attention != JOINT
        ]

    def device_profile(self, package: str) -> str:
        """Where Core ML's measurement of a package goes (macOS only)."""
        return self.under_root(fill(DEVICE_PROFILE, package=self.relative(package).removesuffix(".mlpackage")))

    def folder(self, model: str, kind: str) -> str:
        return self.under_root(folder_name(model, kind))

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

    def stage_benchmarks(self, stem: str, setting: CompressionSetting) -> list[str]:
        """The benchmark files of the jobs that make and measure one stage package."""
        path, slug = self.relative(stem), setting.slug
        files = [self.job_benchmark("convert", path=path), self.job_benchmark("fidelity", path=path, precision=slug)]
        return files + ([self.job_benchmark("compress", path=path, compression=slug)] if slug != FP16 else [])

    def sweep_stages(self, model: str, layout, mode, on_macos: bool, attention: str = JOINT) -> list[dict]:
        """Stage0..N of one sweep layout under one mode and attention, with what the summary reads of
        each; a block range whose attention is not joint also names its fp16 joint twin and the
        figures against its joint twins (the package's, and its fp16 one's)."""
        ranges = [replace(block_range, attention=attention) for block_range in layout.ranges]
        joint_stems = self.stage_stems(model, layout.ranges)
        stages = []
        for index, stem in enumerate(self.stage_stems(model, ranges)):
            setting = mode.for_stage(index, layout.stage_count)
            package = self.compressed(stem, setting)
            stage = {"stage": index, "package": package, "fp16_package": self.compressed(stem, CompressionSetting())}
            stage["measurement"] = self.measurement(package)
            stage["benchmarks"] = self.stage_benchmarks(stem, setting)
            if stem != joint_stems[index]:
                stage["joint_fp16_package"] = self.compressed(joint_stems[index], CompressionSetting())
                split = sorted({package, stage["fp16_package"]})
                stage["against_joint"] = [self.against_joint(path) for path in split]
                stage["benchmarks"] += [
                    self.job_benchmark("against_joint", **self.package_parts(path)) for path in split
                ]
            if on_macos:
                stage["device"] = self.device_profile(package)
            stages.append(stage)
        return stages

    def sweep_rows(self, sweep, on_macos: bool) -> list[dict]:
        return [
            {"layout": layout.name, "sizes": list(layout.sizes), "mode": mode.name, "attention": attention,
             "stages": self.sweep_stages(sweep.model, layout, mode, on_macos, attention),
             "end_to_end": self.sweep_end_to_end(mode.name)}
            for layout in sweep.layouts
            for mode in sweep.modes
            for attention in sweep.attentions
        ]  # fmt: skip

    def sweep_end_to_end(self, mode: str) -> str:
        """One end-to-end check per compression mode (not per layout), on the sweep's first layout."""
        return self.sweep_report(f"end_to_end/{mode}.json")

    def sweep_fp16_chain(self) -> str:
        """The app's chain with fp16 MMDiT packages: what every mode's end-to-end check is held against."""
        return self.sweep_report("fp16_chain.safetensors")

    def app_chain_packages(self, sweep, mode_name: str | None = None) -> dict[str, dict[str, str]]:
        """The app's folder entries of a sweep's end-to-end chain, on its first layout with joint
        attention: shared (text encoders, VAE decoder, tokenizer files, as the model's folder has
        them) and the MMDiT's (Conditioning under the mode's default, each stage under its own
        setting), under mode `mode_name` or, without one, fp16."""
        layout = sweep.layouts[0]
        mode = None if mode_name is None else next(mode for mode in sweep.modes if mode.name == mode_name)
        shared = {f"{name}.mlpackage": path for name, path in self.folder_packages(sweep.model, layout.ranges).items()
                  if name in (*TEXT_ENCODERS, VAE_DECODER)}  # fmt: skip
        conditioning = self.compressed(self.stem("conditioning", model=sweep.model),
                                       mode.default if mode else CompressionSetting())  # fmt: skip
        mmdit = {f"{CONDITIONING}.mlpackage": conditioning}
        for index, stem in enumerate(self.stage_stems(sweep.model, layout.ranges)):
            setting = mode.for_stage(index, layout.stage_count) if mode else CompressionSetting()
            mmdit[f"{STAGE.format(index=index)}.mlpackage"] = self.compressed(stem, setting)
        return {"shared": {**shared, **self.tokenizer_files()}, "mmdit": mmdit}

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
        rows = self.sweep_rows(sweep, on_macos)
        stages = [stage for row in rows for stage in row["stages"]]
        twins = ("package", "fp16_package", "joint_fp16_package")
        return {
            "end_to_end": sorted({row["end_to_end"] for row in rows}),
            "packages": sorted({stage[key] for stage in stages for key in twins if key in stage}),
            "measurements": sorted({stage["measurement"] for stage in stages}),
            "against_joint": sorted({path for stage in stages for path in stage.get("against_joint", [])}),
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
