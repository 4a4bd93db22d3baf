"""The metadata reads the official SDK makes before its first call on a module:
``GET /settings/fields?module=X``, ``GET /settings/related_lists?module=X`` and ``GET /settings/modules``.

Built once per schema from the field specs, so the SDK type-checks values against the same schema
the sandbox enforces.
"""

from __future__ import annotations

from syncengine.model import JSON
from syncengine.sandbox.records import module_id
from syncengine.sandbox.schema import FieldSpec, FieldType, ModuleSpec, Schema

__all__ = ["fields_json", "modules_json", "related_lists_json"]

_JSON_TYPE = {
    FieldType.INTEGER: "integer",
    FieldType.BIGINT: "string",
    FieldType.DOUBLE: "double",
    FieldType.CURRENCY: "double",
    FieldType.PERCENT: "double",
    FieldType.BOOLEAN: "boolean",
    FieldType.MULTISELECTPICKLIST: "jsonarray",
    FieldType.LOOKUP: "jsonobject",
}


def _field_id(module: str, n: int) -> str:
    return str(int(module_id(module)) * 1000 % 10**18 + n)


def _field(module: str, n: int, f: FieldSpec) -> dict[str, JSON]:
    out: dict[str, JSON] = {
        "api_name": f.api_name,
        "id": _field_id(module, n),
        "field_label": f.api_name.replace("_", " "),
        "display_label": f.api_name.replace("_", " "),
        "data_type": f.type.value,
        "json_type": _JSON_TYPE.get(f.type, "string"),
        "system_mandatory": f.mandatory,
        "read_only": False,
        "custom_field": f.external,
        "visible": True,
        "length": f.length if f.length is not None else 16,
        "unique": {"casesensitive": "false"} if (f.unique or f.external) else {},
        "external": {"show": True, "type": "org", "allow_multiple_config": False} if f.external else None,
    }
    if f.values:
        out["pick_list_values"] = [
            {
                "display_value": v,
                "actual_value": v,
                "id": _field_id(module, 500 + k),
                "sequence_number": k + 1,
            }
            for k, v in enumerate(f.values)
        ]
    if f.type is FieldType.LOOKUP and f.lookup_module is not None:
        out["lookup"] = {
            "module": {"api_name": f.lookup_module, "id": module_id(f.lookup_module)},
            "display_label": f.lookup_module,
            "api_name": f.api_name,
            "id": _field_id(module, 900 + n),
        }
    return out


def fields_json(schema: Schema, module: ModuleSpec) -> dict[str, JSON]:
    """The body of ``GET /settings/fields?module=...``."""
    fields: list[JSON] = [_field(module.api_name, n, f) for n, f in enumerate(module.fields, start=1)]
    # Relation fields (Member_Status, list_price, ...) are fields of the linking records in Zoho;
    # listing them lets the SDK accept them in update_related_records.
    seen = {f.api_name for f in module.fields}
    for rl in schema.lists.get(module.api_name, {}).values():
        for f in rl.fields.values():
            if f.api_name not in seen:
                seen.add(f.api_name)
                fields.append(_field(module.api_name, 700 + len(fields), f))
    return {"fields": fields}


def related_lists_json(schema: Schema, module: ModuleSpec) -> dict[str, JSON]:
    """The body of ``GET /settings/related_lists?module=...``."""
    lists: list[JSON] = []
    for n, (name, rl) in enumerate(schema.lists.get(module.api_name, {}).items(), start=1):
        lists.append(
            {
                "id": _field_id(module.api_name, 300 + n),
                "api_name": name,
                "name": name,
                "display_label": name.replace("_", " "),
                "sequence_number": str(n),
                "module": {"api_name": rl.related_module, "id": module_id(rl.related_module)},
                "href": f"{module.api_name}/{{ENTITYID}}/{name}",
                "type": "default",
                "visible": True,
            }
        )
    return {"related_lists": lists}


def modules_json(schema: Schema) -> dict[str, JSON]:
    """The body of ``GET /settings/modules``."""
    mods: list[JSON] = [
        {
            "api_name": m.api_name,
            "module_name": m.api_name,
            "id": module_id(m.api_name),
            "generated_type": "default",
            "api_supported": True,
            "singular_label": m.api_name.rstrip("s").replace("_", " "),
            "plural_label": m.api_name.replace("_", " "),
        }
        for m in schema.modules
    ]
    return {"modules": mods}
