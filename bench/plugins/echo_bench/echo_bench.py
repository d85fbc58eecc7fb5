"""A null `encryption_provider` for bench/rpc.py: both methods echo their bytes unchanged.

It does no work of its own, so a benchmark call measures the host, the wire and the worker
runtime, and nothing else.
"""

from __future__ import annotations

from plugins.sdk import Ciphertext, Context, DecryptRequest, EncryptRequest, Plaintext, Plugin

plugin = Plugin()


@plugin.category("encryption_provider")
class NullCipher:
    def __init__(self, ctx: Context) -> None:
        self.key_id = "null"

    async def encrypt(self, args: EncryptRequest) -> Ciphertext:
        return Ciphertext(ciphertext=args.plaintext, key_id=self.key_id)

    async def decrypt(self, args: DecryptRequest) -> Plaintext:
        return Plaintext(plaintext=args.ciphertext)
