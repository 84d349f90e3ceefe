"""``scaled_dot_product_attention`` for torch tensors, with a backward: a drop-in
for ``torch.nn.functional.scaled_dot_product_attention`` in training on the CPU.

``import fastattn`` does not import this module, nor torch; ``import
fastattn.torch`` does (``pip install fastattn[torch]``).

The forward and backward run fastattn's fused kernels on NumPy views of the
tensors (``tensor.detach().numpy()``: no copy, whatever the strides, expanded
dimensions included) and hand their results back with ``torch.from_numpy``
(no copy either). For the backward, the forward keeps its output and the
log-sum-exp of each query's scores (L numbers per head), never L x S weights:
``scaled_dot_product_attention_backward`` recomputes them from these.
"""
import numbers

try:
    import torch
    from torch.autograd.function import once_differentiable
except ImportError as error:                    # pragma: no cover
    raise ImportError(f"fastattn.torch needs torch: pip install 'fastattn[torch]' "
                      f"({error})") from error

import numpy as np

from fastattn import attention as _attention

__all__ = ["scaled_dot_product_attention"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` (torch 2.13), its forward
    and its backward computed by fastattn on the CPU.

    Same signature, same semantics, same shapes: query (..., L, E), key
    (..., S, E), value (..., S, Ev); leading dims broadcast; a bool mask keeps
    the True entries, a float mask is added to the scaled scores; ``is_causal``
    is top-left (query i sees keys j <= i); ``enable_gqa`` shares each key/value
    head among consecutive query heads. A query whose keys are all masked gets
    zeros and zero gradients, as torch on the CPU. Gradients flow to query, key
    and value (those that require them); fastattn runs with
    ``torch.get_num_threads()`` threads.

    The call goes to torch's own function instead, unchanged (torch computes,
    or raises its own error), when

    - a tensor is not on the CPU, or is not a plain strided tensor (a subclass,
      sparse, nested);
    - ``dropout_p`` is not 0 (fastattn has no dropout);
    - query, key and value are not all float32 or all float64 (float16 and
      bfloat16 included), or a float ``attn_mask`` has another dtype than query;
    - CPU autocast is on (torch would compute in bfloat16), or a ``torch.func``
      transform (``vmap``, ``grad``, ...) is running (they need a function
      written in torch operations);
    - ``attn_mask`` requires grad (fastattn gives no gradient for the mask);
    - ``attn_mask`` is given with ``is_causal=True`` (torch's call: torch 2.13
      raises there, except in its fused CPU kernel, which applies both);
    - ``is_causal`` or ``enable_gqa`` is not a bool, or ``scale`` not a real
      number (a bool included) or None;
    - fastattn would refuse the shapes (fewer than 2 dims, E or S that differ,
      leading dims or a mask that do not broadcast, query heads not a multiple
      of key/value heads under ``enable_gqa``).

    The backward cannot be differentiated again (no double backward).
    """
    if not _takes(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, enable_gqa=enable_gqa)
    return _FusedAttention.apply(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def _plain_cpu_tensor(tensor):
    # a subclass (FakeTensor under torch.compile, CausalBias, ...) has its own
    # meaning of the call: leave it to torch
    return (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.is_cpu
            and tensor.layout == torch.strided and not tensor.is_nested)


def _functorch_transforms_active():
    # what torch.autograd.Function itself asks before it refuses a transform
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active and active())


def _takes(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """Whether fastattn computes this call (see the list in
    ``scaled_dot_product_attention``'s docstring); otherwise torch does."""
    tensors = (query, key, value) + (() if attn_mask is None else (attn_mask,))
    if not all(_plain_cpu_tensor(t) for t in tensors):
        return False
    if not (isinstance(dropout_p, numbers.Real) and dropout_p == 0):
        return False
    if query.dtype not in _FLOAT_DTYPES or not query.dtype == key.dtype == value.dtype:
        return False
    if torch.is_autocast_enabled("cpu") or _functorch_transforms_active():
        return False
    if not (isinstance(is_causal, bool) and isinstance(enable_gqa, bool)):
        return False
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        return False
    try:
        *_, batch_shape = _attention._attention_shapes(query.shape, key.shape, value.shape,
                                                       enable_gqa)
    except ValueError:
        return False
    if attn_mask is not None:
        if is_causal or attn_mask.requires_grad or attn_mask.ndim == 0:
            return False
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            return False
        scores_shape = tuple(batch_shape) + (query.shape[-2], key.shape[-2])
        if not _attention._broadcasts_to(tuple(attn_mask.shape), scores_shape):
            return False
    return True


def _array(tensor):
    """A NumPy view of a CPU tensor's memory, whatever its strides."""
    return None if tensor is None else tensor.detach().numpy()


def _tensor(array):
    # torch warns on a read-only array (a broadcast view): give it a copy
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


class _FusedAttention(torch.autograd.Function):
    """fastattn's forward (with the log-sum-exp) and backward as one autograd node."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, enable_gqa):
        variant = dict(attn_mask=_array(attn_mask), is_causal=is_causal, scale=scale,
                       enable_gqa=enable_gqa)
        output, lse = _attention.scaled_dot_product_attention(
            _array(query), _array(key), _array(value), **variant, return_lse=True,
            num_threads=torch.get_num_threads())
        output, lse = _tensor(output), _tensor(lse)
        # saved as tensors, so that autograd refuses a backward after any of them
        # changed in place
        ctx.save_for_backward(query, key, value, attn_mask, output, lse)
        ctx.is_causal, ctx.scale, ctx.enable_gqa = is_causal, scale, enable_gqa
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        query, key, value, attn_mask, output, lse = ctx.saved_tensors
        grads = _attention.scaled_dot_product_attention_backward(
            _array(grad_output), _array(query), _array(key), _array(value), _array(output),
            _array(lse), attn_mask=_array(attn_mask), is_causal=ctx.is_causal, scale=ctx.scale,
            enable_gqa=ctx.enable_gqa, num_threads=torch.get_num_threads())
        grads = tuple(_tensor(grad) if needed else None
                      for grad, needed in zip(grads, ctx.needs_input_grad[:3]))
        return grads + (None,) * 4     # attn_mask, is_causal, scale, enable_gqa
