"""What ships with a compressed video: the int8 post-filter artifact and the ``inflate`` side."""
