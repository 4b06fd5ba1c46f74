"""Back-load over HL7 v2: warehouse resources built into ORU/VXU/MDM/ADT messages and sent over MLLP."""

from pipelines.backload.hl7 import native

native.use(__path__)  # the builders' compiled modules, where a build of their current source exists
