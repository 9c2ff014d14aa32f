"""CLIP text encoders (CLIP-L as TextEncoder, OpenCLIP bigG as TextEncoder2) for the app.

The app feeds token ids as float32 and reads the penultimate hidden state (what SD3's
`encode_prompt` uses) and the projected pooled output.

The pooled output is the final hidden state at one position, which transformers finds with
an argmax: over the ids (configs with the legacy `eos_token_id` 2), or over `ids == EOS`.
The app pads CLIP-L's ids with EOS, so that argmax is over ties, and MIL's `reduce_argmax`
leaves the winner of a tie unspecified. Here the position is the smallest index holding the
wanted id, a `reduce_min` over values: the same position as transformers', on any executor.
"""

from pathlib import Path

import torch
from transformers import CLIPTextModelWithProjection

from sd3coreml.contract import BOS, EOS, LEGACY_EOS_TOKEN_ID, MAX_TOKENS
from sd3coreml.convert.conversion import TensorSpec, convert_module
from sd3coreml.convert.package import ARTIFACT_KEY, save_package
from sd3coreml.errors import PipelineError


def pooled_position(ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """transformers' pooled position for each row of `ids`, computed without an argmax.

    Legacy configs: the first index of the largest id; otherwise the first index of
    `eos_token_id`, or 0 where there is none (the argmax of an all-False row).
    """
    length = ids.shape[-1]
    positions = torch.arange(length, dtype=ids.dtype)
    wanted = ids.amax(dim=-1, keepdim=True) if eos_token_id == LEGACY_EOS_TOKEN_ID else eos_token_id
    first = torch.where(ids == wanted, positions, length).amin(dim=-1)
    return torch.where(first == length, 0, first)


class TextEncoderForApp(torch.nn.Module):
    def __init__(self, encoder: CLIPTextModelWithProjection):
        super().__init__()
        self.encoder = encoder
        self.eos_token_id = encoder.config.eos_token_id

    def forward(self, input_ids):
        # Ids reach 49407; cast before anything runs in fp16 (exact only up to 2048).
        ids = input_ids.to(torch.int32)
        outputs = self.encoder(input_ids=ids, output_hidden_states=True)
        rows = torch.arange(ids.shape[0])
        pooled = outputs.last_hidden_state[rows, pooled_position(ids, self.eos_token_id)]
        return outputs.hidden_states[-2], self.encoder.text_projection(pooled)


def load_text_encoder(folder: Path) -> CLIPTextModelWithProjection:
    if not (folder / "config.json").is_file():
        raise PipelineError(f"{folder}: no config.json; point 'components' at an SD3 diffusers-layout folder")
    return CLIPTextModelWithProjection.from_pretrained(
        str(folder), attn_implementation="eager", dtype=torch.float32, use_safetensors=True
    ).eval()


def example_token_ids() -> torch.Tensor:
    """BOS, a few words, then EOS padding, as CLIP's tokenizer pads for SD3."""
    ids = torch.full((1, MAX_TOKENS), float(EOS))
    ids[0, :4] = torch.tensor([BOS, 320.0, 1125.0, 539.0])
    return ids


def convert_text_encoder(encoder_dir: Path, target: str, out: Path) -> None:
    """Convert one CLIP text encoder folder to an fp16 `.mlpackage` with the contract's names."""
    module = TextEncoderForApp(load_text_encoder(Path(encoder_dir))).eval()
    mlmodel = convert_module(
        module,
        [TensorSpec("input_ids", (1, MAX_TOKENS))],
        ["hidden_embeds", "pooled_outputs"],
        target,
        example=(example_token_ids(),),
    )
    save_package(mlmodel, Path(out), {ARTIFACT_KEY: f"CLIP text encoder ({Path(encoder_dir).name})"})
