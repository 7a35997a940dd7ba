"""Make "KV_TUNING" a member of peft's closed `PeftType` enum so `register_peft_method` accepts it.

peft (>= 0.15) only registers methods whose name is already a `PeftType` member, and `PeftType` is a plain
`str`-Enum with no extension hook. We add the member the way `enum` itself stores members (the member map, the
value map and the class attribute). This relies on CPython's enum internals (3.10-3.13); the test suite checks
`PeftType("KV_TUNING")`, membership and a save/load round trip, so a Python or peft change that breaks it fails
loudly. If peft ever ships the member itself, it is used as is.
"""

from peft.utils.peft_types import PeftType


def _extend_peft_type(name: str) -> PeftType:
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


KV_TUNING = _extend_peft_type("KV_TUNING")
