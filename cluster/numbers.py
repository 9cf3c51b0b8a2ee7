"""Integer arithmetic the core does in several places."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
