"""CLIP text encoders (CLIP-L as TextEncoder, OpenCLIP bigG as TextEncoder2) for the app.

The app feeds token ids as float32 and reads the penultimate hidden state (what SD3's
`encode_prompt` uses) and the projected pooled output.
"""

from pathlib import Path

import torch
from transformers import CLIPTextModelWithProjection

from sd3coreml.convert import TensorSpec, convert_module
from sd3coreml.errors import PipelineError
from sd3coreml.package import ARTIFACT_KEY, save_package
from sd3coreml.tokenizer import BOS, EOS, MAX_TOKENS


class TextEncoderForApp(torch.nn.Module):
    def __init__(self, encoder: CLIPTextModelWithProjection):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        # Ids reach 49407; cast before anything runs in fp16 (exact only up to 2048).
        ids = input_ids.to(torch.int32)
        outputs = self.encoder(input_ids=ids, output_hidden_states=True)
        return outputs.hidden_states[-2], outputs.text_embeds


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
