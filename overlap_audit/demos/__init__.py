"""The demos: a synthetic one on bundled photos (``synthetic``) and a real-data one on Debian's clip art
(``realdata``)."""
