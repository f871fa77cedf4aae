"""User ids that broke the raw `{user_id}` hash tag (empty, braces) or that no key name should carry
(10 KB, control characters, lone surrogates): shared by the store's contract and its Redis-only tests."""

ODD_IDS = [
    "",
    "}",
    "{",
    "}{",
    "{}",
    "{abc}",
    "abc",
    "x" * 10_240,
    "a\x00b",
    "line\nbreak",
    "\r\n",
    " ",
    "\U0001f476\U0001f3fd emoji",
    "\udc80lone-surrogate",
    "\ud800",
    "caf\u00e9",
    "cafe\u0301",
]
