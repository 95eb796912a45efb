"""The embedded demo model: small enough to ship, loads in both backends, and both continue
"Once upon a time" greedily with the same English words."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from llama_twin.demo import DEMO_FILES, demo_model_dir
from llama_shared.tokenizers import AutoTokenizer

PROMPT = "Once upon a time"
NEW_TOKENS = 24

# Common English words (the most frequent words of modern English plus the archaic forms of older
# prose such as unto, thee, hath), to judge whether generated text is made of real words.
COMMON_ENGLISH_WORDS = frozenset("""
a about above after again against all also am among an and another any are as at away
back be because been before began behind being below beside between both brought but by
call called came can cannot come comes coming could day days did do does done down
each earth even ever every eyes face far father few find first for forth found four from
gave get give given go god goes going gone good great had hand hands has have he head hear
heard heart heaven her here him himself his house how i if in into is it its itself
just keep kept king know known land large last later lay lead left let life light like
little live long look lord love made make man many may me men might mine more most mother
much must my name near neither never new night no none nor not nothing now of off old on
once one only or other our out over own people place put said same saw say says see seen
send sent set shall she should since so some son sons soon still such take taken tell than
that the their them themselves then there therefore these they thing things this those
though three through thus time times to together too took toward two under until up upon
us very was water way we well went were what when where whether which while white who
whom whose why will with within without word words work world would year years yet you
young your
unto thee thou thy thine ye hath doth art shalt wilt saith spake sayest didst hast
behold thereof therein wherefore hither thither whither lo verily yea nay amen
brethren children daughter daughters servant servants people city cities field fields
fire bread blood sea mountain mountains gold silver voice spirit soul holy sin sins
among against evil peace power glory fear war battle host hosts priest priests tribe
tribes law laws commandment commandments covenant offering offerings altar temple tabernacle
morning evening wife wives woman women brother brothers seed camp gate gates wall walls
side sword stone stones tree trees wood flesh bones body strength mercy judgment truth
speak spoke spoken answered answer arose rose stood sat dwelt dwell went go walk walked
bring bare bear born die died dead slay slew smote destroy destroyed build built
give gave hear heard eat ate drink drank pass passed turn turned return returned
""".split())


@pytest.fixture(scope="module")
def demo_dir():
    return demo_model_dir()


@pytest.fixture(scope="module")
def prompt_ids(demo_dir):
    return np.asarray([AutoTokenizer.from_pretrained(demo_dir).encode(PROMPT)])


def test_demo_folder_holds_the_model_and_fits_in_10_mb(demo_dir):
    names = set(os.listdir(demo_dir))
    assert set(DEMO_FILES) <= names
    assert "SOURCE.md" in names
    total = sum(os.path.getsize(os.path.join(demo_dir, name)) for name in names)
    assert total <= 10 * 1000 * 1000, f"the demo model folder holds {total} bytes"


@pytest.fixture(scope="module")
def torch_continuation(demo_dir, prompt_ids):
    import torch

    from llama_torch import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(demo_dir)
    return model.generate(torch.from_numpy(prompt_ids), max_new_tokens=NEW_TOKENS, do_sample=False).numpy()


def test_both_backends_continue_the_prompt_with_the_same_greedy_tokens(demo_dir, prompt_ids, torch_continuation):
    from llama_flax import FlaxLlamaForCausalLM

    model = FlaxLlamaForCausalLM.from_pretrained(demo_dir)
    flax_ids = np.asarray(model.generate(prompt_ids, max_new_tokens=NEW_TOKENS, do_sample=False))
    np.testing.assert_array_equal(flax_ids, torch_continuation)
    np.testing.assert_array_equal(torch_continuation[:, :prompt_ids.shape[1]], prompt_ids)


def test_the_continuation_is_mostly_known_english_words(demo_dir, prompt_ids, torch_continuation):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    text = tokenizer.decode(torch_continuation[0, prompt_ids.shape[1]:], skip_special_tokens=True)
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 8, text
    known = [word for word in words if word in COMMON_ENGLISH_WORDS]
    assert len(known) >= 0.6 * len(words), f"{text!r}: only {len(known)} of {len(words)} words are known English"


def test_mask_command_without_a_model_uses_the_demo_tokenizer(demo_dir, capsys):
    from llama_twin.cli import main

    assert main(["mask", PROMPT, "--no-color"]) == 0
    out = capsys.readouterr().out
    tokens = AutoTokenizer.from_pretrained(demo_dir).tokenize(PROMPT)
    assert all(repr(token) in out for token in ["<s>", *tokens])
