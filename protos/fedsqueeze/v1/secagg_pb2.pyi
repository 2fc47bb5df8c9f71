from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggSegment(_message.Message):
    __slots__ = ("length", "bits")
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    length: int
    bits: int
    def __init__(self, length: _Optional[int] = ..., bits: _Optional[int] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("protocol_version", "round", "parties", "neighbours", "threshold", "graph_seed", "segments", "run")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    round: int
    parties: _containers.RepeatedScalarFieldContainer[int]
    neighbours: int
    threshold: int
    graph_seed: bytes
    segments: _containers.RepeatedCompositeFieldContainer[SecAggSegment]
    run: int
    def __init__(self, protocol_version: _Optional[int] = ..., round: _Optional[int] = ..., parties: _Optional[_Iterable[int]] = ..., neighbours: _Optional[int] = ..., threshold: _Optional[int] = ..., graph_seed: _Optional[bytes] = ..., segments: _Optional[_Iterable[_Union[SecAggSegment, _Mapping]]] = ..., run: _Optional[int] = ...) -> None: ...

class SecAggPublicKeys(_message.Message):
    __slots__ = ("round", "party", "cipher_key", "mask_key", "identity", "signature")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round: int
    party: int
    cipher_key: bytes
    mask_key: bytes
    identity: bytes
    signature: bytes
    def __init__(self, round: _Optional[int] = ..., party: _Optional[int] = ..., cipher_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., identity: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggKeyList(_message.Message):
    __slots__ = ("round", "keys", "session")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    round: int
    keys: _containers.RepeatedCompositeFieldContainer[SecAggPublicKeys]
    session: _containers.RepeatedCompositeFieldContainer[SecAggKeyDigest]
    def __init__(self, round: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[SecAggPublicKeys, _Mapping]]] = ..., session: _Optional[_Iterable[_Union[SecAggKeyDigest, _Mapping]]] = ...) -> None: ...

class SecAggKeyDigest(_message.Message):
    __slots__ = ("party", "digest")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    party: int
    digest: bytes
    def __init__(self, party: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class SecAggCiphertext(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext", "self_mask_digest", "mask_key_digest")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    sender: int
    receiver: int
    ciphertext: bytes
    self_mask_digest: bytes
    mask_key_digest: bytes
    def __init__(self, sender: _Optional[int] = ..., receiver: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., self_mask_digest: _Optional[bytes] = ..., mask_key_digest: _Optional[bytes] = ...) -> None: ...

class SecAggShareBundle(_message.Message):
    __slots__ = ("round", "self_mask_commitment", "shares", "own_self_mask_digest", "own_mask_key_digest")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    OWN_SELF_MASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OWN_MASK_KEY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    round: int
    self_mask_commitment: bytes
    shares: _containers.RepeatedCompositeFieldContainer[SecAggCiphertext]
    own_self_mask_digest: bytes
    own_mask_key_digest: bytes
    def __init__(self, round: _Optional[int] = ..., self_mask_commitment: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[SecAggCiphertext, _Mapping]]] = ..., own_self_mask_digest: _Optional[bytes] = ..., own_mask_key_digest: _Optional[bytes] = ...) -> None: ...

class SecAggShares(_message.Message):
    __slots__ = ("round", "sender", "receiver", "self_mask_share", "mask_key_share")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARE_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    round: int
    sender: int
    receiver: int
    self_mask_share: bytes
    mask_key_share: bytes
    def __init__(self, round: _Optional[int] = ..., sender: _Optional[int] = ..., receiver: _Optional[int] = ..., self_mask_share: _Optional[bytes] = ..., mask_key_share: _Optional[bytes] = ...) -> None: ...

class SecAggMaskedInput(_message.Message):
    __slots__ = ("round", "party", "segments", "mask_peers")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MASK_PEERS_FIELD_NUMBER: _ClassVar[int]
    round: int
    party: int
    segments: _containers.RepeatedScalarFieldContainer[bytes]
    mask_peers: SecAggMaskPeers
    def __init__(self, round: _Optional[int] = ..., party: _Optional[int] = ..., segments: _Optional[_Iterable[bytes]] = ..., mask_peers: _Optional[_Union[SecAggMaskPeers, _Mapping]] = ...) -> None: ...

class SecAggMaskPeers(_message.Message):
    __slots__ = ("party", "peers", "signature")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    party: int
    peers: _containers.RepeatedScalarFieldContainer[int]
    signature: bytes
    def __init__(self, party: _Optional[int] = ..., peers: _Optional[_Iterable[int]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggConfirmation(_message.Message):
    __slots__ = ("round", "party", "identity", "signature")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round: int
    party: int
    identity: bytes
    signature: bytes
    def __init__(self, round: _Optional[int] = ..., party: _Optional[int] = ..., identity: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("round", "survivors", "dropped", "confirmations", "mask_peers")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    MASK_PEERS_FIELD_NUMBER: _ClassVar[int]
    round: int
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    confirmations: _containers.RepeatedCompositeFieldContainer[SecAggConfirmation]
    mask_peers: _containers.RepeatedCompositeFieldContainer[SecAggMaskPeers]
    def __init__(self, round: _Optional[int] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ..., confirmations: _Optional[_Iterable[_Union[SecAggConfirmation, _Mapping]]] = ..., mask_peers: _Optional[_Iterable[_Union[SecAggMaskPeers, _Mapping]]] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "self_mask", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    self_mask: bool
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., self_mask: _Optional[bool] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("round", "party", "shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round: int
    party: int
    shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, round: _Optional[int] = ..., party: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...

class SecAggPartyState(_message.Message):
    __slots__ = ("setup", "party", "stage", "cipher_secret", "mask_secret", "self_mask_seed", "neighbour_keys", "received", "inputs", "identity", "mask_peers", "view", "session")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CIPHER_SECRET_FIELD_NUMBER: _ClassVar[int]
    MASK_SECRET_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SEED_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_KEYS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MASK_PEERS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    setup: bytes
    party: int
    stage: int
    cipher_secret: bytes
    mask_secret: bytes
    self_mask_seed: bytes
    neighbour_keys: SecAggKeyList
    received: _containers.RepeatedCompositeFieldContainer[SecAggShares]
    inputs: _containers.RepeatedScalarFieldContainer[bytes]
    identity: bytes
    mask_peers: _containers.RepeatedScalarFieldContainer[int]
    view: bytes
    session: bytes
    def __init__(self, setup: _Optional[bytes] = ..., party: _Optional[int] = ..., stage: _Optional[int] = ..., cipher_secret: _Optional[bytes] = ..., mask_secret: _Optional[bytes] = ..., self_mask_seed: _Optional[bytes] = ..., neighbour_keys: _Optional[_Union[SecAggKeyList, _Mapping]] = ..., received: _Optional[_Iterable[_Union[SecAggShares, _Mapping]]] = ..., inputs: _Optional[_Iterable[bytes]] = ..., identity: _Optional[bytes] = ..., mask_peers: _Optional[_Iterable[int]] = ..., view: _Optional[bytes] = ..., session: _Optional[bytes] = ...) -> None: ...
