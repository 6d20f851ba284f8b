"""Training code, apart from the audit's runtime path: the clipdup detector (``clipdup``) and the small CLIP
(``smallclip``)."""
