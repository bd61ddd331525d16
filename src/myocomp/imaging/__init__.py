"""Images -> muscle metrics: Dixon volumes, label maps, composition metrics, DICOM, stitching, QC."""
