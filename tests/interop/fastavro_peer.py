"""An independent Avro peer for tests/interop.rs, built on fastavro.

  read DIR   reads every DIR/*.bin as an Avro single-object message: finds
             its schema by the CRC-64-AVRO fingerprint that fastavro computes
             from each schemas/*.avsc (and schemas/history/), decodes it, and
             prints one JSON line per file: {"file", "schema", "record"}.
  write DIR  writes single-object input events with fastavro's own
             fingerprints: DIR/<name>.bin, and DIR/manifest.json listing
             what each holds.

Nothing here imports leadflow code: the schemas are read from the files.
"""

import datetime
import io
import json
import pathlib
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

ROOT = pathlib.Path(__file__).resolve().parents[2] / "schemas"
MAGIC = b"\xc3\x01"


def schemas():
    """(name, parsed schema, 8 fingerprint bytes) of every schema file."""
    out = []
    for path in sorted(ROOT.glob("*.avsc")) + sorted((ROOT / "history").glob("*.avsc")):
        parsed = parse_schema(json.loads(path.read_text()))
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        out.append((path.stem, parsed, fp))
    return out


def plain(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000) if value.tzinfo else value
    raise TypeError(f"not JSON: {value!r}")


def read(directory):
    by_fp = {fp: (name, parsed) for name, parsed, fp in schemas()}
    for path in sorted(pathlib.Path(directory).glob("*.bin")):
        data = path.read_bytes()
        assert data[:2] == MAGIC, f"{path.name}: not a single-object message"
        name, parsed = by_fp[data[2:10]]
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed)
        print(json.dumps({"file": path.name, "schema": name, "record": record}, default=plain))


def millis(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


def write(directory):
    found = {name: (parsed, fp) for name, parsed, fp in schemas()}
    at = 1_767_312_000_000  # 2026-01-02T00:00:00Z
    lead = {
        "event_id": "fa-lead-1", "lead_ext_id": "FA-1", "kind": "created",
        "occurred_at": millis(at), "email": "ines@example.org", "phone": "+34911000111",
        "first_name": "Inés", "last_name": "Peña", "company": "Fastavro SA",
        "source": "partner", "owner": "rep-7", "estimated_value": 42000.0,
        "probability": 0.4, "initial_score": None,
        "consent": {"email": True, "sms": None, "recorded_at": millis(at), "source": "web_form:demo"},
        "timezone": "Europe/Madrid", "attributes": {"industry": "logistics"},
    }
    v1_lead = {k: v for k, v in lead.items() if k not in ("timezone", "attributes")}
    v1_lead.update(event_id="fa-lead-2", lead_ext_id="FA-2", email="old@example.org")
    interaction = {
        "event_id": "fa-int-1", "lead_ext_id": "FA-1", "occurred_at": millis(at + 3_600_000),
        "kind": "email_reply", "channel": "email", "actor": "FA-1", "attributes": {},
    }
    stage = {
        "event_id": "fa-stage-1", "lead_ext_id": "FA-1", "occurred_at": millis(at + 7_200_000),
        "from_stage": "new", "to_stage": "qualified", "owner": "rep-7", "deal_value": 38000.0,
    }
    messages = [
        ("lead", "LeadEvent", lead),
        ("lead_v1", "LeadEvent.v1", v1_lead),
        ("interaction", "InteractionEvent", interaction),
        ("stage", "StageChangeEvent", stage),
    ]
    manifest = []
    for stem, schema, record in messages:
        parsed, fp = found[schema]
        out = io.BytesIO()
        out.write(MAGIC + fp)
        fastavro.schemaless_writer(out, parsed, record)
        (pathlib.Path(directory) / f"{stem}.bin").write_bytes(out.getvalue())
        manifest.append({"file": f"{stem}.bin", "schema": schema, "fingerprint": fp.hex(),
                         "record": json.loads(json.dumps(record, default=plain))})
    (pathlib.Path(directory) / "manifest.json").write_text(json.dumps(manifest))


if __name__ == "__main__":
    {"read": read, "write": write}[sys.argv[1]](sys.argv[2])
