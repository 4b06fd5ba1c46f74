"""Deterministic synthetic legacy clinical data (FHIR R4, HL7 v2, C-CDA, defects) for demos and tests."""

from pipelines.demo.model import build_patient, iter_patients
from pipelines.demo.records import PatientRecord
from pipelines.demo.summary import Defect, DemoSummary, FileSummary
from pipelines.demo.writer import generate_demo_data

__all__ = [
    "Defect",
    "DemoSummary",
    "FileSummary",
    "PatientRecord",
    "build_patient",
    "generate_demo_data",
    "iter_patients",
]
