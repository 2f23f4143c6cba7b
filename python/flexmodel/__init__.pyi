from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

Inputs = Union[str, List[str], torch.Tensor, List[List[int]]]
HookFn = Callable[[torch.Tensor, str], Optional[torch.Tensor]]

class FlexModelError(Exception): ...

class Plugin:
    def __init__(self, path: str, config: Union[None, str, Dict[str, Any]] = ...) -> None: ...
    @property
    def name(self) -> str: ...

class Cache(Dict[str, torch.Tensor]): ...

class Model:
    def hook_points(self, seq_len: int = ...) -> List[Tuple[str, List[str], List[int]]]: ...
    def run_with_cache(
        self,
        inputs: Inputs,
        names_filter: Union[None, str, Sequence[str]] = ...,
        stop_at: Optional[str] = ...,
        padding: str = ...,
    ) -> Tuple[Optional[torch.Tensor], Cache]: ...
    def run_with_hooks(
        self,
        inputs: Inputs,
        fwd_hooks: Sequence[Tuple[str, Union[Plugin, HookFn]]] = ...,
        padding: str = ...,
        return_outputs: bool = ...,
    ) -> Any: ...

def load(
    path: str, dtype: str = ..., device: str = ..., tp: int = ..., pp: int = ..., dp: int = ...
) -> Model: ...
