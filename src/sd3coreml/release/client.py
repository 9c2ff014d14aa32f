"""The app that loads these folders, pinned, and what its Swift code requires of them.

MobileDiffuser at commit bfe2f28 (branch MCL) is the last revision whose app loads these
Core ML folders (its later `main` runs MLX). Read from `SD3PipelineLoader.swift`,
`ml-stable-diffusion/swift/StableDiffusion/pipeline/StableDiffusion3Pipeline.swift` and
`TextEncoderXL.swift` at that commit:

- the text encoders and the VAE are fed their *first* input, whatever its name, so each must
  have exactly one; the VAE's and the last stage's *first* output is read: exactly one each;
- `encodePrompt` hard-codes the sizes: CLIP-L and CLIP-G hidden states side by side, then a
  zero padding of [1, 77, 2048] to a joint width of 4096, then zero T5 slots [1, 4096, 1, 77];
  the pooled outputs concatenated and reshaped to [1, 2048, 1, 1];
- a `MultiModalDiffusionTransformerAdaLN*.mlmodelc` file switches the app to another stage
  interface (no `modulation_inputs`), on which every stage of ours fails.

A folder of other widths (the demo's tiny model) is well formed but cannot run in the app:
its manifest says `app_loadable: false`, with why.
"""

import re

from sd3coreml.contract import (
    APP_CLIP_HIDDEN_WIDTH,
    APP_JOINT_WIDTH,
    APP_POOLED_WIDTH,
    APP_TEXT_TOKENS,
    ONE_INPUT,
    STAGE_PREFIX,
)
from sd3coreml.contract import MAX_TOKENS as APP_TOKENS

STAGE = re.compile(rf"{STAGE_PREFIX}(\d+)")
# What a folder's manifest says of the client (loadable_record), carried from packages to app folders.
APP_RECORD_KEYS = ("client", "app_loadable", "app_problems")


def interface_problems(interfaces: dict[str, tuple[dict, dict]]) -> list[str]:
    """What the app could not feed or read in a folder's models.

    `interfaces`: entry name (without suffix) -> ({input: shape}, {output: shape}).
    """
    problems = []
    stages = sorted((int(STAGE.fullmatch(name).group(1)), name) for name in interfaces if STAGE.fullmatch(name))
    for name in ONE_INPUT:
        if name in interfaces and len(interfaces[name][0]) != 1:
            problems.append(f"{name} has {len(interfaces[name][0])} inputs; the app feeds only the first")
    for name in ("VAEDecoder", *(stages[-1][1:] if stages else ())):
        if name in interfaces and len(interfaces[name][1]) != 1:
            problems.append(f"{name} has {len(interfaces[name][1])} outputs; the app reads only the first")
    return problems + size_problems(interfaces)


def size_problems(interfaces: dict[str, tuple[dict, dict]]) -> list[str]:
    """The widths and lengths the app hard-codes, against the folder's."""
    try:
        clip = [interfaces[name][1] for name in ("TextEncoder", "TextEncoder2")]
        tokens = [next(iter(interfaces[name][0].values()))[-1] for name in ("TextEncoder", "TextEncoder2")]
        pooled_input = interfaces["MultiModalDiffusionTransformerConditioning"][0]["pooled_text_embeddings"]
        joint_input = interfaces["MultiModalDiffusionTransformerStage0"][0]["token_level_text_embeddings"]
        hidden = sum(outputs["hidden_embeds"][-1] for outputs in clip)
        pooled = sum(outputs["pooled_outputs"][-1] for outputs in clip)
    except (KeyError, IndexError, StopIteration) as missing:
        return [f"no {missing} where the app looks for it"]
    found = {
        "CLIP token count": (tokens, [APP_TOKENS, APP_TOKENS]),
        "CLIP-L + CLIP-G hidden width": (hidden, APP_CLIP_HIDDEN_WIDTH),
        "CLIP-L + CLIP-G pooled width": (pooled, APP_POOLED_WIDTH),
        "Conditioning's pooled_text_embeddings": (list(pooled_input), [1, APP_POOLED_WIDTH, 1, 1]),
        "Stage0's token_level_text_embeddings": (list(joint_input), [1, APP_JOINT_WIDTH, 1, APP_TEXT_TOKENS]),
    }
    return [f"{what} is {value}, the app's {wanted}" for what, (value, wanted) in found.items() if value != wanted]


def loadable_record(interfaces: dict[str, tuple[dict, dict]]) -> dict:
    """What a folder's manifest says about the app: loadable or not, and why."""
    problems = interface_problems(interfaces)
    return {"app_loadable": not problems, **({"app_problems": problems} if problems else {})}
