"""Deep Compression: weight sharing (sharing.py), Huffman coding (huffman.py), the sparse tensor format
(sparse_format.py) and the entropy-coded `.deep.pt` checkpoint (codec.py: the format, deep_file.py: files + report)."""
