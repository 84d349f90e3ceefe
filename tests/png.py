"""The pixel size of a PNG file, read from its header (no image library needed)."""
import struct

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk; asserts a complete PNG (signature first,
    IHDR the first chunk, IEND the last)."""
    data = path.read_bytes()
    assert data[:8] == SIGNATURE, f"{path} is not a PNG"
    length, chunk = struct.unpack(">I4s", data[8:16])
    assert chunk == b"IHDR" and length == 13, f"{path}: no IHDR chunk first"
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", f"{path}: truncated (no IEND)"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
