"""Hugging Face transformers from configs (#21): Linear-like layers, embeddings, tied weights,
head and FFN pruning, token data, the hf: source and its files. Random weights, tiny configs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import transformers  # a test dependency: missing, the file fails instead of skipping  # noqa: F401

import modelzip
from modelzip.core.counting import count_params
from modelzip.core.embedding import CompressedEmbedding
from modelzip.core.errors import DataError, ModelError, ModelzipError
from modelzip.core.linear_like import is_linear_like, linear_view
from modelzip.core.registry import get_method, list_methods
from modelzip.models import build_from_source, build_hf, model_factory, resolve_model
from modelzip.prune.heads import (
    FFNPruneConfig,
    HeadPruneConfig,
    attention_blocks,
    ffn_blocks,
)

GPT2 = {
    "model_type": "gpt2",
    "n_layer": 4,
    "n_embd": 32,
    "n_head": 4,
    "vocab_size": 60,
    "n_positions": 32,
    "architectures": ["GPT2LMHeadModel"],
    "bos_token_id": 0,
    "eos_token_id": 0,
}
BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 60,
    "max_position_embeddings": 32,
}
BERT_MLM = {**BERT, "architectures": ["BertForMaskedLM"]}


def _build(config):
    torch.manual_seed(0)
    return build_hf(config).eval()


def _x(n=2, t=12):
    return torch.randint(0, 60, (n, t), generator=torch.Generator().manual_seed(1))


def _compress(model, config, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return modelzip.compress(model, config, sample=x, measure=False, deploy=False, **kw)


def _roundtrip(model, x, tmp_path):
    path = modelzip.save(model, tmp_path / "m.mzip")
    loaded = modelzip.load(path)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    return loaded


# -- Linear-like layers -------------------------------------------------------------------------


def test_conv1d_is_linear_like_and_its_view_computes_the_same():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(24, 16)
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    assert is_linear_like(conv)
    view = linear_view(conv)
    assert isinstance(view, torch.nn.Linear) and view.weight.shape == (24, 16)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(view(x), conv(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["int8", "quantize_weights"])
def test_gpt2_every_linear_like_layer_is_compressed(method, tmp_path):
    model, x = _build(GPT2), _x()
    small, report = _compress(model, get_method(method).example, x)
    changed = {c.name for c in report.layers}
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv1d) == 16 and conv1d <= changed
    assert "model.lm_head" in changed
    assert len(changed) >= 17
    assert not any(type(m).__name__ in ("Conv1D", "Linear") for m in small.modules())
    assert report.after.size_bytes < report.before.size_bytes / 3
    # Conv1D layers are costed as the Linear layers they are: the same MACs before and after.
    assert report.after.macs == report.before.macs > 0
    with torch.inference_mode():
        assert small(x).shape == model(x).shape
    _roundtrip(small, x, tmp_path)


def test_bert_embeddings_are_compressed_by_int8():
    model, x = _build(BERT), _x()
    small, report = _compress(model, get_method("int8").example, x)
    emb = small.model.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert isinstance(getattr(emb, name), CompressedEmbedding), name
    # Every weight matrix is int8 now: 3.2x smaller at this tiny width (LayerNorms, biases and
    # per-row scales stay float); with the embeddings left float32 it was 1.27x.
    assert report.after.size_bytes < report.before.size_bytes / 3
    with torch.inference_mode():
        torch.testing.assert_close(small(x), model(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("method", ["int8", "quantize_weights", "magnitude_prune", "svd"])
def test_embedding_forms_match_their_table(method, tmp_path):
    model, x = _build(BERT), _x()
    small, _ = _compress(model, get_method(method).example, x)
    word = small.model.embeddings.word_embeddings
    assert isinstance(word, CompressedEmbedding)
    ids = torch.tensor([[0, 5, 59]])
    dense = word.to_dense()
    assert torch.equal(word(ids), dense(ids))
    original = model.model.embeddings.word_embeddings.weight
    assert not torch.equal(dense.weight, original)  # really compressed
    # ... and still the table: relative error within what the method costs at its example.
    rel = float((dense.weight - original).norm() / original.norm())
    bound = {"int8": 0.02, "quantize_weights": 0.2, "magnitude_prune": 0.8, "svd": 0.9}[method]
    assert rel < bound, rel
    assert word.param_count() <= original.numel()
    _roundtrip(small, x, tmp_path)


# -- tied weights -------------------------------------------------------------------------------


def test_bert_tied_decoder_keeps_its_bias_and_shares_the_table(tmp_path):
    model, x = _build(BERT_MLM), _x()
    decoder = model.model.cls.predictions.decoder
    assert decoder.weight is model.model.bert.embeddings.word_embeddings.weight
    assert decoder.bias is not None
    small, report = _compress(model, get_method("int8").example, x)
    word = small.model.bert.embeddings.word_embeddings
    assert isinstance(word, CompressedEmbedding)
    assert small.model.cls.predictions.decoder is word.table
    assert torch.equal(word.table.bias, decoder.bias)
    assert not report.skipped
    assert count_params(small) == count_params(model)
    # The decoder computes under its own name, though it is the embedding's table too.
    assert report.after.macs == report.before.macs > 0
    _roundtrip(small, x, tmp_path)


def test_tied_output_layer_and_embedding_stay_one_weight(tmp_path):
    model, x = _build(GPT2), _x()
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    small, report = _compress(model, get_method("quantize_weights").example, x)
    wte, head = small.model.transformer.wte, small.model.lm_head
    assert isinstance(wte, CompressedEmbedding) and head is wte.table
    assert count_params(small) <= count_params(model)
    assert any(c.name == "model.lm_head" and "tied" in c.note for c in report.layers)
    loaded = _roundtrip(small, x, tmp_path)
    assert loaded.model.lm_head is loaded.model.transformer.wte.table


def test_tied_layer_of_a_linear_only_selection_brings_its_embedding_along():
    model, x = _build(GPT2), _x()
    config = modelzip.Int8Config(select=modelzip.Select(types=("Linear",)))
    small, _ = _compress(model, config, x)
    assert small.model.lm_head is small.model.transformer.wte.table
    assert count_params(small) <= count_params(model)


def test_tied_weight_is_refused_with_the_reason_by_a_method_that_cannot_share_it():
    model, x = _build(GPT2), _x()
    from modelzip.prune.schedule import GlobalPruneConfig

    small, report = _compress(model, GlobalPruneConfig(sparsity=0.5), x)
    reasons = {s.name: s.reason for s in report.skipped}
    assert "tied" in reasons["model.lm_head"]
    assert small.model.lm_head.weight is small.model.transformer.wte.weight
    assert count_params(small) < count_params(model)


NO_INCREASE_EXEMPT = {
    # Stores a k-entry codebook per layer on top of one code per weight: a few more numbers
    # (0.5-1%), 8x fewer bytes; its count is the stored numbers, by design.
    "weight_sharing": "codes + codebook",
}


@pytest.mark.parametrize("config", [GPT2, BERT_MLM], ids=["gpt2", "bert"])
def test_no_method_leaves_more_parameters(config):
    model, x = _build({**config, "n_layer": 2} if "n_layer" in config else config), _x()
    base, base_bytes = count_params(model), modelzip.api.model_stats(model).size_bytes
    refused = set()
    for method in list_methods():
        try:
            small, report = _compress(model, get_method(method).example, x)
        except ModelzipError as e:  # a whole-model refusal names the reason (channel_prune)
            assert "trace" in str(e), (method, e)
            refused.add(method)
            continue
        if method in NO_INCREASE_EXEMPT:
            assert report.after.size_bytes < base_bytes, method
            continue
        assert count_params(small) <= base, (method, count_params(small), base)
        assert report.after.params <= report.before.params, method
    assert refused == {"channel_prune"}


# -- head and FFN pruning -----------------------------------------------------------------------


def _attention_weights(model):
    total = 0
    for block in attention_blocks(model):
        for name in [n for n, _ in block.inputs] + [block.output]:
            total += model.get_submodule(name).weight.numel()
    return total


@pytest.mark.parametrize("config", [GPT2, BERT], ids=["gpt2", "bert"])
def test_head_prune_to_half_the_heads(config, tmp_path):
    model, x = _build(config), _x()
    blocks = attention_blocks(model)
    assert len(blocks) == config.get("n_layer", config.get("num_hidden_layers"))
    small, report = _compress(model, HeadPruneConfig(sparsity=0.5), x)
    assert _attention_weights(small) * 2 == _attention_weights(model)
    for block in attention_blocks(small):
        assert block.heads == 2
    with torch.inference_mode():
        assert small(x).shape == model(x).shape
    assert report.after.params < report.before.params
    loaded = _roundtrip(small, x, tmp_path)
    assert [b.heads for b in attention_blocks(loaded)] == [2] * len(blocks)


@pytest.mark.parametrize("config", [GPT2, BERT], ids=["gpt2", "bert"])
def test_head_prune_computes_what_masking_the_heads_computes(config):
    """Removing heads = zeroing their columns of the output projection in the dense model."""
    model, x = _build(config), _x()
    small, _ = _compress(model, HeadPruneConfig(sparsity=0.5), x)
    masked = _build(config)
    for before, after in zip(attention_blocks(masked), attention_blocks(small), strict=True):
        out = linear_view(masked.get_submodule(before.output))
        kept_cols = after.heads * after.head_dim
        small_out = small.get_submodule(after.output).weight
        # which columns survived: match them by value
        cols = [int(torch.nonzero((col == out.weight.T).all(dim=1))[0]) for col in small_out.T]
        assert len(cols) == kept_cols
        # Whole heads survive: the kept columns fill after.heads heads of the original.
        assert len({c // before.head_dim for c in cols}) == after.heads == before.heads // 2
        drop = torch.ones(out.in_features, dtype=torch.bool)
        drop[cols] = False
        layer = masked.get_submodule(before.output)
        with torch.no_grad():
            if type(layer).__name__ == "Conv1D":
                layer.weight[drop] = 0
            else:
                layer.weight[:, drop] = 0
    with torch.inference_mode():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [GPT2, BERT], ids=["gpt2", "bert"])
def test_ffn_prune_removes_neurons_exactly(config, tmp_path):
    model, x = _build(config), _x()
    blocks = ffn_blocks(model)
    assert len(blocks) == config.get("n_layer", config.get("num_hidden_layers"))
    small, _ = _compress(model, FFNPruneConfig(sparsity=0.5), x)
    for before, block in zip(ffn_blocks(model), ffn_blocks(small), strict=True):
        up, down = small.get_submodule(block.up), small.get_submodule(block.down)
        width = linear_view(model.get_submodule(before.up)).out_features
        assert up.out_features == down.in_features == width // 2
    # Zeroing the removed neurons' rows in the dense model computes the same (act(0) = 0).
    masked = _build(config)
    for before, after in zip(ffn_blocks(masked), ffn_blocks(small), strict=True):
        up = linear_view(masked.get_submodule(before.up))
        kept = small.get_submodule(after.up).weight
        rows = [int(torch.nonzero((up.weight == r).all(dim=1))[0]) for r in kept]
        drop = torch.ones(up.out_features, dtype=torch.bool)
        drop[rows] = False
        layer = masked.get_submodule(before.up)
        with torch.no_grad():
            if type(layer).__name__ == "Conv1D":
                layer.weight[:, drop] = 0
            else:
                layer.weight[drop] = 0
            layer.bias[drop] = 0
    with torch.inference_mode():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
    _roundtrip(small, x, tmp_path)


def test_structured_then_quantized_gpt2_round_trips(tmp_path):
    model, x = _build(GPT2), _x()
    recipe = [HeadPruneConfig(sparsity=0.5), FFNPruneConfig(sparsity=0.25), modelzip.Int8Config()]
    small, report = _compress(model, recipe, x)
    assert report.after.params < report.before.params
    _roundtrip(small, x, tmp_path)


def test_head_prune_refuses_compressed_projections():
    model, x = _build(BERT), _x()
    small, _ = _compress(model, modelzip.Int8Config(), x)
    with pytest.raises(ModelError, match="before the methods that compress"):
        _compress(small, HeadPruneConfig(sparsity=0.5), x)


def test_channel_prune_points_a_transformer_to_head_and_ffn_pruning():
    from modelzip.prune import ChannelPruneConfig

    model, x = _build(BERT), _x()
    with pytest.raises(ModelError, match="head_prune and ffn_prune"):
        _compress(model, ChannelPruneConfig(sparsity=0.5), x)


def test_head_prune_config_is_validated():
    with pytest.raises(modelzip.core.errors.ConfigError, match="sparsity"):
        HeadPruneConfig(sparsity=1.0)
    with pytest.raises(modelzip.core.errors.ConfigError, match="sparsity"):
        FFNPruneConfig(sparsity=-0.1)


def test_ffn_blocks_leave_a_cnn_classifier_alone():
    from modelzip.models import create

    assert ffn_blocks(create("lenet5")) == []


# -- the hf: source -----------------------------------------------------------------------------


def test_hf_reference_builds_from_a_local_config_and_files_rebuild_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT2))
    torch.manual_seed(0)
    model = resolve_model(f"hf:{path}")
    assert type(model.model).__name__ == "GPT2LMHeadModel"
    assert model._modelzip_source["kind"] == "hf"
    assert model._modelzip_source["class"] == "AutoModelForCausalLM"
    again = build_from_source(model._modelzip_source)
    assert type(again.model) is type(model.model)
    x = _x()
    _roundtrip(model.eval(), x, tmp_path)


@pytest.mark.parametrize(
    "config, match",
    [
        ({**BERT, "auto_map": {"AutoModel": "evil.Model"}}, "auto_map"),
        ({**BERT, "model_type": "no-such-model"}, "no-such-model"),
        ({k: v for k, v in BERT.items() if k != "model_type"}, "model_type"),
        ({**BERT, "modelzip_class": "builtins.eval"}, "not allowed"),
        ({**BERT, "hidden_size": 10**12}, "hidden_size"),
    ],
)
def test_bad_configs_are_refused(config, match):
    with pytest.raises(ModelError, match=match):
        build_hf(config)


def test_a_file_naming_a_class_outside_the_allow_list_is_refused():
    with pytest.raises(ModelError, match="not allowed"):
        build_from_source({"kind": "hf", "class": "AutoModelForCausalLM.from_pretrained",
                           "config": BERT})  # fmt: skip


def test_missing_config_file(tmp_path):
    with pytest.raises(ModelError, match="no such"):
        resolve_model(f"hf:{tmp_path / 'nope.json'}")


# -- token data ---------------------------------------------------------------------------------


def test_npy_token_ids_are_a_corpus(tmp_path):
    from modelzip.data import TextCorpus, load_dataset

    ids = np.random.default_rng(0).integers(0, 60, 2000)
    np.save(tmp_path / "tokens.npy", ids)
    data = load_dataset(str(tmp_path / "tokens.npy"))
    assert isinstance(data, TextCorpus) and data.vocab_size == int(ids.max()) + 1
    assert len(data.train) + len(data.val) + len(data.test) == 2000
    assert torch.equal(data.train[:10], torch.from_numpy(ids[:10]))


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array([0.5, 1.5]), "integers"),
        (np.array([-1, 2, 3]), r"\[0"),
        (np.zeros(0, int), "non-empty"),
    ],
)
def test_bad_token_files_are_refused(tmp_path, array, match):
    from modelzip.data import load_dataset

    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "bad.npy"))


def test_text_needs_a_local_tokenizer(tmp_path):
    from modelzip.data import load_dataset

    (tmp_path / "t.txt").write_text("hello world " * 50)
    with pytest.raises(DataError, match="never downloaded"):
        load_dataset(str(tmp_path / "t.txt"))
    with pytest.raises(DataError, match="not a local directory"):
        load_dataset(str(tmp_path / "t.txt"), tokenizer="gpt2")


def _word_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "the", "cat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(directory)


def test_text_with_a_local_tokenizer(tmp_path):
    from modelzip.data import load_dataset
    from modelzip.data.tokens import tokenizer_dir

    _word_tokenizer(tmp_path / "tok")
    (tmp_path / "t.txt").write_text("hello world the cat " * 40 + "dog")
    with tokenizer_dir(tmp_path / "tok"):
        data = load_dataset(str(tmp_path / "t.txt"))
    assert data.vocab_size == 5
    assert data.train[:4].tolist() == [1, 2, 3, 4]
    assert data.test[-1].item() == 0  # "dog" is unknown
    assert data.decode(data.train[:2]) == "hello world"


def _counting_stream(tmp_path):
    from modelzip.data import load_dataset

    rng = np.random.default_rng(0)
    # A learnable stream: each token is the previous one plus one (mod 60).
    start = rng.integers(0, 60, 200)
    ids = ((start[:, None] + np.arange(20)[None]) % 60).reshape(-1)
    np.save(tmp_path / "tokens.npy", ids)
    return load_dataset(str(tmp_path / "tokens.npy"))


def test_static_int8_calibrates_on_token_data(tmp_path):
    data = _counting_stream(tmp_path)
    model = _build({**GPT2, "n_layer": 2})
    static = modelzip.Int8Config(activations="static", calibration_size=16)
    small, report = modelzip.compress(model, [static], data, measure=False, deploy=False)
    # Every Conv1D and the output layer calibrated on the token data; the token embedding is
    # that output layer's table, and the position embedding, which meets no activations to
    # calibrate, is skipped with that reason.
    assert sum(c.after == "StaticInt8Linear" for c in report.layers) == 9
    assert small.model.transformer.wte.table is small.model.lm_head
    reasons = {s.name: s.reason for s in report.skipped}
    assert "calibrate" in reasons["model.transformer.wpe"]
    assert report.after.accuracy is not None and report.before.accuracy is not None


def test_finetuning_with_the_language_model_loss_on_token_data(tmp_path):
    from modelzip.train import TrainConfig, evaluate

    data = _counting_stream(tmp_path)
    model = _build({**GPT2, "n_layer": 2})
    before = evaluate(model, data)["loss"]
    finetune = TrainConfig(
        epochs=1, lr=3e-3, optimizer="adam", seq_len=16, batch_size=16, steps_per_epoch=60
    )
    small, report = modelzip.compress(
        model, [modelzip.MagnitudePruneConfig(sparsity=0.5)], data, finetune=finetune,
        measure=False, deploy=False,
    )  # fmt: skip
    assert report.finetune_epochs == 1
    after = evaluate(small, data)["loss"]
    assert np.isfinite(after) and after < before - 0.25, (before, after)


# -- the command line ---------------------------------------------------------------------------


def test_cli_compresses_an_hf_model_from_a_config(tmp_path, capsys):
    from modelzip.cli import main

    (tmp_path / "config.json").write_text(json.dumps(BERT_MLM))
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 60, 3000))
    (tmp_path / "recipe.yaml").write_text("- method: head_prune\n  sparsity: 0.5\n- method: int8\n")
    out = tmp_path / "small.mzip"
    rc = main([
        "compress", f"hf:{tmp_path / 'config.json'}", "--dataset", str(tmp_path / "tokens.npy"),
        "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(out), "--json", "--no-latency",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["after"]["params"] < result["before"]["params"]
    model = modelzip.load(out)
    assert [b.heads for b in attention_blocks(model)] == [2, 2]


# -- nn.MultiheadAttention (torchvision's ViT blocks) -------------------------------------------


class TinyViTBlock(torch.nn.Module):
    """A ViT encoder block as torchvision writes it: MultiheadAttention called, an MLP."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.self_attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Dropout(0.0),
            torch.nn.Linear(2 * width, width),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


@model_factory
def tiny_vit() -> torch.nn.Module:
    return torch.nn.Sequential(TinyViTBlock(), TinyViTBlock(), torch.nn.Linear(32, 10))


def _vit():
    torch.manual_seed(0)
    model = resolve_model(f"{__name__}:tiny_vit").eval()
    return model, torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))


def test_packed_attention_computes_what_multihead_attention_computes():
    from modelzip.core.attention import PackedAttention

    torch.manual_seed(0)
    x = torch.randn(7, 3, 32)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[:, -2:] = True
    for batch_first in (False, True):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        packed = PackedAttention.from_mha(mha).eval()
        q = x.transpose(0, 1) if batch_first else x
        for kw in ({}, {"need_weights": False}, {"key_padding_mask": kpm},
                   {"attn_mask": torch.ones(7, 7, dtype=torch.bool).triu(1)}):  # fmt: skip
            want, got = mha(q, q, q, **kw), packed(q, q, q, **kw)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            if want[1] is not None:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["int8", "quantize_weights", "magnitude_prune"])
def test_multihead_attention_projections_are_compressed(method, tmp_path):
    model, x = _vit()
    small, report = _compress(model, get_method(method).example, x)
    changed = {c.name for c in report.layers}
    for block in ("0", "1"):
        assert {f"{block}.self_attention.in_proj", f"{block}.self_attention.out_proj"} <= changed
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in small.modules())
    assert count_params(small) <= count_params(model)
    if method == "int8":
        with torch.inference_mode():
            torch.testing.assert_close(small(x), model(x), rtol=0.05, atol=0.05)
    _roundtrip(small, x, tmp_path)


def test_head_prune_on_multihead_attention(tmp_path):
    model, x = _vit()
    small, _ = _compress(model, HeadPruneConfig(sparsity=0.5), x)
    blocks = attention_blocks(small)
    assert [b.heads for b in blocks] == [2, 2]
    attn = small[0].self_attention
    assert attn.in_proj.weight.shape == (3 * 16, 32) and attn.out_proj.weight.shape == (32, 16)
    with torch.inference_mode():
        assert small(x).shape == model(x).shape
    loaded = _roundtrip(small, x, tmp_path)
    assert loaded[0].self_attention.num_heads == 2
    ffn = ffn_blocks(small)
    assert [b.up for b in ffn] == ["0.mlp.0", "1.mlp.0"]


# -- hostile files ------------------------------------------------------------------------------


def _rewrite_metadata(path, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()["modelzip"])
    change(meta)
    save_file(tensors, str(path), metadata={"modelzip": json.dumps(meta)})


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m.__setitem__("aliases", {"model.lm_head": 5}), "aliases"),
        (lambda m: m.__setitem__("aliases", {"model.lm_head": "no.such.layer"}), "rebuild"),
        (
            lambda m: m.__setitem__(
                "attributes", {"model.transformer.h.0.attn": {"num_heads": -2}}
            ),
            "attributes",
        ),
        (
            lambda m: m.__setitem__("attributes", {"model.transformer.h.0.attn": {"forward": 3}}),
            "may not be set",
        ),
        (
            lambda m: m.__setitem__("attributes", {"model.transformer.h.0.attn": {"num_heads": 3}}),
            "checksum|digest|tamper|modified",
        ),
    ],
)
def test_hostile_aliases_and_attributes_are_refused(tmp_path, change, match):
    model, x = _build(GPT2), _x()
    small, _ = _compress(model, [HeadPruneConfig(sparsity=0.5), modelzip.Int8Config()], x)
    path = modelzip.save(small, tmp_path / "m.mzip")
    _rewrite_metadata(path, change)
    with pytest.raises(ModelError, match=match):
        modelzip.load(path)


def test_a_fresh_process_builds_a_bert_beside_the_cpu_torch_torchvision():
    """transformers imports torchvision when it is installed; the torchvision wheel built for
    another torch fails at that import unless modelzip imports it first (the test session's
    conftest does, so this runs in a fresh process, as a user's would)."""
    import subprocess
    import sys

    code = (
        "import json, sys; from modelzip.models import build_hf; "
        "m = build_hf(json.loads(sys.argv[1])); print(type(m.model).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(BERT_MLM)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("Bert")
