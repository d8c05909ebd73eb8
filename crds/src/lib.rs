//! kok's API types. Only types live here; behaviour lives in `templates` and `controllers`.
