"""scpnode: a DICOM node that screens chest CT for COVID-19 and reports back as DICOM SR."""

__version__ = "0.1.0"
