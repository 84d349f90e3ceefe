"""fastattn.torch.scaled_dot_product_attention: torch's function, forward and backward,
computed by fastattn; what it leaves to torch; a small model trained with it."""
import numpy as np
import pytest

from tests.reference import tolerance

torch = pytest.importorskip("torch", reason="torch is not installed: `pip install torch==2.13.0`")
fastattn_torch = pytest.importorskip("fastattn.torch")
F = torch.nn.functional

DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
# torch's float32 backward accumulates in float32 over the keys; float64 is exact to rounding
GRAD_TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-4},
                   torch.float64: tolerance(np.float64)}


def random(generator, shape, dtype, requires_grad=True):
    return torch.randn(shape, generator=generator, dtype=dtype, requires_grad=requires_grad)


def masked_rows(mask):
    """The mask with query rows 0 and 3 hiding every key."""
    mask = mask.clone()
    mask[..., [0, 3], :] = False if mask.dtype == torch.bool else -torch.inf
    return mask


class Inputs:
    """Random inputs of one dtype, from one seed; masks for (2, 3, 5, 7) scores."""

    def __init__(self, dtype, seed=0):
        self.dtype, self.generator = dtype, torch.Generator().manual_seed(seed)
        self.bool_mask = torch.rand((2, 3, 5, 7), generator=self.generator) < 0.6
        self.bool_mask |= torch.eye(5, 7, dtype=torch.bool)     # every query sees a key
        self.float_mask = torch.randn((2, 1, 5, 7), generator=self.generator, dtype=dtype)

    def qkv(self, q_shape, k_shape, v_shape):
        return tuple(random(self.generator, shape, self.dtype)
                     for shape in (q_shape, k_shape, v_shape))

    def cross(self, n_queries, n_keys, head_dim=8, value_dim=8, batch=(2, 3)):
        return self.qkv(batch + (n_queries, head_dim), batch + (n_keys, head_dim),
                        batch + (n_keys, value_dim))


# each kind of call that torch's signature allows: (query, key, value, keyword
# arguments), small enough for gradcheck
CASES = {
    "plain": lambda x: (*x.cross(6, 6), {}),
    "causal_square": lambda x: (*x.cross(6, 6), {"is_causal": True}),
    "causal_L_lt_S": lambda x: (*x.cross(4, 9), {"is_causal": True}),
    "causal_L_gt_S": lambda x: (*x.cross(9, 4), {"is_causal": True}),
    "bool_mask": lambda x: (*x.cross(5, 7), {"attn_mask": x.bool_mask}),
    "float_mask": lambda x: (*x.cross(5, 7), {"attn_mask": x.float_mask}),
    "bool_mask_masked_rows": lambda x: (*x.cross(5, 7), {"attn_mask": masked_rows(x.bool_mask)}),
    "float_mask_masked_rows": lambda x: (*x.cross(5, 7),
                                         {"attn_mask": masked_rows(x.float_mask)}),
    "gqa": lambda x: (*x.qkv((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8)), {"enable_gqa": True}),
    "gqa_causal": lambda x: (*x.qkv((2, 4, 6, 8), (2, 1, 6, 8), (2, 1, 6, 8)),
                             {"enable_gqa": True, "is_causal": True}),
    "scale": lambda x: (*x.cross(5, 7), {"scale": 0.37}),
    "broadcast_batch": lambda x: (*x.qkv((2, 3, 5, 8), (1, 3, 7, 8), (1, 3, 7, 8)), {}),
    "broadcast_heads_and_mask": lambda x: (*x.qkv((2, 3, 5, 8), (2, 1, 7, 8), (1, 3, 7, 8)),
                                           {"attn_mask": x.bool_mask[:1]}),
    "value_dim_differs": lambda x: (*x.cross(5, 7, head_dim=8, value_dim=3), {}),
    "query_1": lambda x: (*x.cross(1, 7), {}),
    "query_1_causal": lambda x: (*x.cross(1, 7), {"is_causal": True}),
    "no_batch_dims": lambda x: (*x.cross(5, 7, batch=(3,)), {"is_causal": True}),
}


def make_case(name, dtype):
    return CASES[name](Inputs(dtype))


@pytest.fixture
def one_thread():
    """Many tiny calls: on a busy machine, each call of two threads can wait for a
    descheduled one at its barrier (milliseconds); threads are tested elsewhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def computed_by_fastattn(output):
    return output.grad_fn is not None and output.grad_fn.name() == "_FusedAttentionBackward"


def forward_and_gradients(sdpa, query, key, value, grad_output=None, **kwargs):
    output = sdpa(query, key, value, **kwargs)
    if grad_output is None:
        grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=output.dtype)
    inputs = [t for t in (query, key, value, kwargs.get("attn_mask")) if t is not None
              and t.requires_grad]
    return output, torch.autograd.grad(output, inputs, grad_output)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_gradients_equal_torchs(case, dtype):
    query, key, value, kwargs = make_case(case, dtype)
    ours, our_grads = forward_and_gradients(fastattn_torch.scaled_dot_product_attention,
                                            query, key, value, **kwargs)
    theirs, their_grads = forward_and_gradients(F.scaled_dot_product_attention,
                                                query, key, value, **kwargs)
    assert computed_by_fastattn(ours)
    assert ours.dtype == dtype and ours.shape == theirs.shape
    np.testing.assert_allclose(ours.detach(), theirs.detach(), **tolerance(DTYPES[dtype]))
    for name, our_grad, their_grad in zip(("query", "key", "value"), our_grads, their_grads):
        assert our_grad.shape == their_grad.shape and our_grad.dtype == dtype, name
        np.testing.assert_allclose(our_grad, their_grad, err_msg=name, **GRAD_TOLERANCES[dtype])


@pytest.mark.parametrize("is_causal", [False, True])
def test_several_tiles_equal_torchs(is_causal):
    """Longer sequences: several query and key tiles, jobs on every thread."""
    query, key, value = Inputs(torch.float32).qkv((1, 2, 300, 64), (1, 2, 333, 64),
                                                  (1, 2, 333, 64))
    ours, our_grads = forward_and_gradients(fastattn_torch.scaled_dot_product_attention,
                                            query, key, value, is_causal=is_causal)
    theirs, their_grads = forward_and_gradients(F.scaled_dot_product_attention,
                                                query, key, value, is_causal=is_causal)
    assert computed_by_fastattn(ours)
    np.testing.assert_allclose(ours.detach(), theirs.detach(), **tolerance(np.float32))
    for our_grad, their_grad in zip(our_grads, their_grads):
        np.testing.assert_allclose(our_grad, their_grad, **GRAD_TOLERANCES[torch.float32])


@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck(case, one_thread):
    query, key, value, kwargs = make_case(case, torch.float64)

    def sdpa(query, key, value):
        return fastattn_torch.scaled_dot_product_attention(query, key, value, **kwargs)

    assert torch.autograd.gradcheck(sdpa, (query, key, value))


def test_fully_masked_rows_get_zero_gradients():
    query, key, value, kwargs = make_case("bool_mask_masked_rows", torch.float64)
    output, (grad_query, _, _) = forward_and_gradients(
        fastattn_torch.scaled_dot_product_attention, query, key, value, **kwargs)
    assert not output.isnan().any()
    assert (output[..., [0, 3], :] == 0).all() and (grad_query[..., [0, 3], :] == 0).all()


def test_strided_and_expanded_inputs():
    """Views straight from a model (heads transposed out of (B, L, H, E)) and an
    expanded key/value batch (zero strides): no copy on the way in, and autograd
    takes the gradients back through the views."""
    generator = torch.Generator().manual_seed(3)
    projected = random(generator, (2, 6, 3, 3, 8), torch.float64)     # (B, L, 3, H, E)
    shared = random(generator, (1, 3, 6, 8), torch.float64)

    def attend(sdpa):
        query, key, value = projected.permute(2, 0, 3, 1, 4)          # (B, H, L, E) each
        output = sdpa(query, key + shared.expand(2, -1, -1, -1), value, is_causal=True)
        return output, torch.autograd.grad(output.square().sum(), (projected, shared))

    ours, our_grads = attend(fastattn_torch.scaled_dot_product_attention)
    theirs, their_grads = attend(F.scaled_dot_product_attention)
    assert computed_by_fastattn(ours)
    np.testing.assert_allclose(ours.detach(), theirs.detach(), **tolerance(np.float64))
    for our_grad, their_grad in zip(our_grads, their_grads):
        np.testing.assert_allclose(our_grad, their_grad, **tolerance(np.float64))


def test_gradients_only_for_inputs_that_require_them():
    query, key, value, _ = make_case("plain", torch.float64)
    key = key.detach()
    output = fastattn_torch.scaled_dot_product_attention(query, key, value)
    output.sum().backward()
    assert key.grad is None and query.grad is not None and value.grad is not None
    with torch.no_grad():
        assert fastattn_torch.scaled_dot_product_attention(query, key, value).grad_fn is None


def test_backward_refused_after_an_input_changed_in_place():
    query, key, value, _ = make_case("plain", torch.float64)
    key = key.detach().clone()
    output = fastattn_torch.scaled_dot_product_attention(query, key, value)
    key.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_threads_follow_torch(monkeypatch):
    seen = []
    attention = fastattn_torch._attention
    for name in ("scaled_dot_product_attention", "scaled_dot_product_attention_backward"):
        def record(*args, _function=getattr(attention, name), **kwargs):
            seen.append(kwargs["num_threads"])
            return _function(*args, **kwargs)
        monkeypatch.setattr(attention, name, record)
    query, key, value, _ = make_case("plain", torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fastattn_torch.scaled_dot_product_attention(query, key, value).sum().backward()
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 1]


# --- what goes to torch -------------------------------------------------------------

def test_dropout_falls_back_to_torch():
    query, key, value, _ = make_case("plain", torch.float32)
    results = []
    for sdpa in (fastattn_torch.scaled_dot_product_attention, F.scaled_dot_product_attention):
        torch.manual_seed(7)
        results.append(forward_and_gradients(sdpa, query, key, value, dropout_p=0.3))
    (ours, our_grads), (theirs, their_grads) = results
    assert not computed_by_fastattn(ours)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for our_grad, their_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(our_grad, their_grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_falls_back_to_torch(dtype):
    query, key, value, kwargs = make_case("causal_square", dtype)
    ours, our_grads = forward_and_gradients(fastattn_torch.scaled_dot_product_attention,
                                            query, key, value, **kwargs)
    theirs, their_grads = forward_and_gradients(F.scaled_dot_product_attention,
                                                query, key, value, **kwargs)
    assert not computed_by_fastattn(ours) and ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for our_grad, their_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(our_grad, their_grad, rtol=0, atol=0)


def test_mask_requiring_grad_falls_back_to_torch():
    query, key, value, kwargs = make_case("float_mask", torch.float64)
    mask = kwargs["attn_mask"].requires_grad_()
    ours, our_grads = forward_and_gradients(fastattn_torch.scaled_dot_product_attention,
                                            query, key, value, attn_mask=mask)
    theirs, their_grads = forward_and_gradients(F.scaled_dot_product_attention,
                                                query, key, value, attn_mask=mask)
    assert not computed_by_fastattn(ours) and len(our_grads) == 4
    for our_grad, their_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(our_grad, their_grad, rtol=0, atol=0)


@pytest.mark.parametrize("call", ["mask_with_is_causal", "mask_with_is_causal_math_path",
                                  "mixed_dtypes", "float_mask_of_another_dtype", "one_dim",
                                  "gqa_without_heads_dim", "integer_is_causal", "bool_scale"])
def test_what_fastattn_would_refuse_goes_to_torch(call):
    """torch computes it or raises its own error, as if called directly. (A mask
    with is_causal=True: torch 2.13's fused CPU kernel applies both, its math path,
    here for Ev != E, raises.)"""
    query, key, value, _ = make_case("plain", torch.float64)
    mask32 = torch.zeros(6, 6)
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(2)) < 0.5
    calls = {
        "mask_with_is_causal": ((query, key, value), {"attn_mask": mask, "is_causal": True}),
        "mask_with_is_causal_math_path": ((query, key, value[..., :3]),
                                          {"attn_mask": mask, "is_causal": True}),
        "mixed_dtypes": ((query, key.float(), value), {}),
        "float_mask_of_another_dtype": ((query, key, value), {"attn_mask": mask32}),
        "one_dim": ((query[0, 0, 0], key[0, 0, 0], value[0, 0, 0]), {}),
        "gqa_without_heads_dim": ((query[0, 0], key[0, 0], value[0, 0]), {"enable_gqa": True}),
        "integer_is_causal": ((query, key, value), {"is_causal": 1}),
        "bool_scale": ((query, key, value), {"scale": True}),
    }
    args, kwargs = calls[call]
    try:
        expected = F.scaled_dot_product_attention(*args, **kwargs)
    except Exception as error:
        with pytest.raises(type(error)):
            fastattn_torch.scaled_dot_product_attention(*args, **kwargs)
    else:
        ours = fastattn_torch.scaled_dot_product_attention(*args, **kwargs)
        assert not computed_by_fastattn(ours)
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_autocast_and_vmap_go_to_torch():
    query, key, value, _ = make_case("plain", torch.float32)
    with torch.autocast("cpu"):
        assert fastattn_torch.scaled_dot_product_attention(query, key, value).dtype == \
            torch.bfloat16
    ours = torch.vmap(lambda q: fastattn_torch.scaled_dot_product_attention(q, key, value))(
        query.detach())
    theirs = torch.vmap(lambda q: F.scaled_dot_product_attention(q, key, value))(query.detach())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# --- a small model, trained -------------------------------------------------------------

class Block(torch.nn.Module):
    """A pre-norm transformer layer whose attention calls ``sdpa`` (causal)."""

    def __init__(self, d_model, n_heads, sdpa):
        super().__init__()
        self.n_heads, self.sdpa = n_heads, sdpa
        self.attention_norm = torch.nn.LayerNorm(d_model)
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)
        self.mlp_norm = torch.nn.LayerNorm(d_model)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d_model, 4 * d_model), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        batch, length, d_model = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.n_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)          # (batch, heads, length, dim)
        attended = self.sdpa(query, key, value, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, d_model))
        return x + self.mlp(self.mlp_norm(x))


class TinyLanguageModel(torch.nn.Module):
    def __init__(self, sdpa, vocab=50, d_model=32, n_heads=4, n_layers=2, max_length=16):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, d_model)
        self.position = torch.nn.Parameter(0.02 * torch.randn(max_length, d_model))
        self.blocks = torch.nn.ModuleList(Block(d_model, n_heads, sdpa) for _ in range(n_layers))
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab)

    def forward(self, tokens):
        x = self.embedding(tokens) + self.position[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def training_losses(sdpa, dtype, steps=50, batch=4, length=16, vocab=50):
    """Losses of next-token prediction on arithmetic sequences (each token the
    previous plus a stride of 1, 2 or 3, mod vocab: two tokens tell the next),
    Adam, from seed 0."""
    torch.manual_seed(0)
    model = TinyLanguageModel(sdpa, vocab=vocab, max_length=length).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        start = torch.randint(vocab, (batch, 1), generator=data)
        stride = torch.randint(1, 4, (batch, 1), generator=data)
        tokens = (start + stride * torch.arange(length + 1)) % vocab
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-8), (torch.float32, 1e-4)],
                         ids=["float64", "float32"])
def test_training_follows_torchs_loss_curve(dtype, rtol, one_thread):
    calls = []

    def ours(*args, **kwargs):
        output = fastattn_torch.scaled_dot_product_attention(*args, **kwargs)
        calls.append(computed_by_fastattn(output))
        return output

    our_losses = training_losses(ours, dtype)
    their_losses = training_losses(F.scaled_dot_product_attention, dtype)
    assert len(calls) == 2 * 50 and all(calls)
    assert their_losses[-1] < 0.8 * their_losses[0]        # it does learn
    np.testing.assert_allclose(our_losses, their_losses, rtol=rtol, atol=0)
