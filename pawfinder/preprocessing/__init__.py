"""One definition of image preprocessing: a JSON spec, a torch-free numpy/Pillow path and the torch transforms."""
