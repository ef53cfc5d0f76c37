"""Overfitting eight captioned images: the loss goes to ~0 and greedy generation reproduces the training captions,
for every encoder × decoder. If the model cannot memorise eight captions, something is wired wrong."""

import torch
from conftest import scene_images, tiny_model

from modeling_captioner import CaptionerProcessor, build_image_processor


def test_overfit_eight_images(pair, tokenizer):
    model = tiny_model(*pair, tokenizer).train()
    processor = CaptionerProcessor(build_image_processor(model.config), tokenizer)
    images, captions = scene_images(8)
    assert len(set(captions)) == 8
    batch = processor(images=images, text_target=captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first_loss = None
    for _ in range(150):
        loss = model(**batch).loss
        first_loss = first_loss or loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        final_loss = model(**batch).loss.item()
    assert final_loss < 0.05 < first_loss, f"loss {first_loss:.3f} -> {final_loss:.3f}"
    generated = processor.batch_decode(model.generate(batch["pixel_values"]), skip_special_tokens=True)
    assert generated == captions
