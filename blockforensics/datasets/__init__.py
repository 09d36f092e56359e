"""Sample data made on the fly: a bootable Linux disk (``bootdisk``) and an
investigation case with a known history (``investigation``)."""
