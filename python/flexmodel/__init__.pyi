from typing import (
    Any, Callable, ContextManager, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union,
)

import torch

Inputs = Union[str, List[str], torch.Tensor, List[List[int]]]
HookFn = Callable[[torch.Tensor, str], Optional[torch.Tensor]]
Hook = Union["Plugin", HookFn]
Hooks = Sequence[Tuple[str, Hook]]
Loss = Union[Tuple[str, torch.Tensor], Tuple[str, int, int, int]]
Names = Union[None, str, Sequence[str]]

class FlexModelError(Exception): ...

class Plugin:
    def __init__(self, path: str, config: Union[None, str, Dict[str, Any]] = ...) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def config(self) -> str: ...

class Cache(Dict[str, torch.Tensor]): ...

class Generation(NamedTuple):
    tokens: torch.Tensor
    new_tokens: List[Optional[List[int]]]
    text: List[str]
    caches: List[Cache]
    outputs: Dict[str, torch.Tensor]

class Gradients(NamedTuple):
    loss: float
    logits: torch.Tensor
    grads: Cache
    param_grads: Dict[str, torch.Tensor]
    outputs: Dict[str, torch.Tensor]

class Model:
    def hook_points(self, seq_len: int = ...) -> List[Tuple[str, List[str], List[int]]]: ...
    def run_with_cache(
        self, inputs: Inputs, names_filter: Names = ..., stop_at: Optional[str] = ..., padding: str = ...
    ) -> Tuple[Optional[torch.Tensor], Cache]: ...
    def run_with_hooks(
        self,
        inputs: Inputs,
        fwd_hooks: Hooks = ...,
        bwd_hooks: Hooks = ...,
        loss: Optional[Loss] = ...,
        padding: str = ...,
        return_outputs: bool = ...,
    ) -> Any: ...
    def backward(
        self,
        inputs: Inputs,
        loss: Loss,
        fwd_hooks: Hooks = ...,
        bwd_hooks: Hooks = ...,
        grad_filter: Names = ...,
        padding: str = ...,
    ) -> Gradients: ...
    def generate(
        self,
        inputs: Inputs,
        max_new_tokens: int = ...,
        hooks: Hooks = ...,
        names_filter: Names = ...,
        do_sample: bool = ...,
        temperature: float = ...,
        top_k: Optional[int] = ...,
        seed: int = ...,
        ignore_eos: bool = ...,
    ) -> Generation: ...
    def hooks(self, fwd_hooks: Hooks = ..., bwd_hooks: Hooks = ...) -> ContextManager["Model"]: ...
    def to_tokens(self, text: str) -> List[int]: ...
    def to_string(self, ids: Union[Sequence[int], torch.Tensor]) -> str: ...
    @property
    def eos_tokens(self) -> List[int]: ...
    @property
    def vocab_size(self) -> int: ...

class RemoteModel:
    info: Dict[str, Any]
    def hook_points(self, seq_len: int = ...) -> List[Tuple[str, List[str], List[int]]]: ...
    def run_with_cache(
        self, inputs: Inputs, names_filter: Names = ..., stop_at: Optional[str] = ..., padding: str = ...
    ) -> Tuple[Optional[torch.Tensor], Cache]: ...
    def run_with_hooks(
        self,
        inputs: Inputs,
        fwd_hooks: Sequence[Tuple[str, Union[Plugin, str]]] = ...,
        bwd_hooks: Hooks = ...,
        loss: Optional[Loss] = ...,
        padding: str = ...,
        return_outputs: bool = ...,
    ) -> Any: ...
    def generate(
        self,
        inputs: Inputs,
        max_new_tokens: int = ...,
        hooks: Sequence[Tuple[str, Union[Plugin, str]]] = ...,
        ignore_eos: bool = ...,
    ) -> Generation: ...

class Server:
    url: str
    timeout: float
    def load(self, path: Optional[str] = ..., **layout: Any) -> RemoteModel: ...

def remote(
    url: str, key: str, retrieve: Union[None, Plugin, str] = ..., timeout: float = ...
) -> Server: ...
def load(
    path: str, dtype: str = ..., device: str = ..., tp: int = ..., pp: int = ..., dp: int = ...
) -> Model: ...
