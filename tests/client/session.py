"""A whole session through a client generated from the server's own OpenAPI document
by openapi-python-client (run by scripts/typed-client.sh): login, create, list, PATCH,
membership, the change feed, a 404 and a 400. Every answer must come back as the typed
model the document names, with no member left over in `additional_properties` (a
member the document does not describe) and every error's `errorCode` an `ErrorCode`.
Fails loudly on the first untyped or unexpected answer."""

import sys

from fleetgroups_client import AuthenticatedClient, Client
from fleetgroups_client.api.auth import get_token
from fleetgroups_client.api.changes import list_changes
from fleetgroups_client.api.groups import create_group, get_group, list_groups, patch_group
from fleetgroups_client.api.membership import add_devices, device_groups, remove_device
from fleetgroups_client.models import (
    AddDevices,
    AddDevicesResponse200,
    Change,
    ChangeList,
    DeviceGroups,
    Error,
    ErrorCode,
    Group,
    GroupAnswer,
    GroupInput,
    GroupList,
    GroupMergePatch,
    GroupOrigin,
    JsonPatchOperationType0,
    JsonPatchOperationType0Op,
    RemoveDeviceResponse200,
    TokenAnswer,
    TokenRequest,
)


def typed(value, cls, what):
    """`value` is a `cls` whose every member is described by the document."""
    if not isinstance(value, cls):
        sys.exit(f"{what}: expected {cls.__name__}, got {type(value).__name__}: {value!r}")
    extra = getattr(value, "additional_properties", {})
    if extra:
        sys.exit(f"{what}: members the document does not describe: {sorted(extra)}")
    return value


def error(response, status, code, what):
    if response.status_code != status:
        sys.exit(f"{what}: expected {status}, got {response.status_code}: {response.content!r}")
    e = typed(response.parsed, Error, what)
    if not isinstance(e.error_code, ErrorCode) or e.error_code.value != code:
        sys.exit(f"{what}: errorCode {e.error_code!r}, expected the ErrorCode {code}")
    return e


def main(base_url, user, key):
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)
    login = get_token.sync_detailed(client=anonymous, body=TokenRequest(user_name=user, api_key=key))
    token = typed(login.parsed, TokenAnswer, "login").token
    wrong = get_token.sync_detailed(client=anonymous, body=TokenRequest(user_name=user, api_key="fgk_wrong"))
    error(wrong, 401, "invalid_credentials", "a wrong key")

    c = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    created = create_group.sync_detailed(
        client=c, body=GroupInput(name="Trucks", description="north", devices=["d1", "d2"])
    )
    g = typed(created.parsed, GroupAnswer, "create")
    assert created.status_code == 201 and g.id.startswith("grp-") and g.devices == ["d1", "d2"], g
    # A group made here says so; an office group (ofc-<n>) says "office" and every
    # write to it is 403 office_group_read_only, a code the enum must know.
    assert g.origin == GroupOrigin.LOCAL, g
    assert ErrorCode("office_group_read_only") == ErrorCode.OFFICE_GROUP_READ_ONLY
    assert isinstance(g.api_usage, int), g

    listed = typed(list_groups.sync_detailed(client=c).parsed, GroupList, "list")
    [only] = listed.groups
    typed(only, Group, "a listed group")
    paged = typed(list_groups.sync_detailed(client=c, limit=1).parsed, GroupList, "a page")
    assert paged.next_ is None, paged

    # PATCH through the generated operation, all three ways: a typed merge patch, a
    # typed JSON Patch, and a JSON Patch the server refuses (a path outside the group).
    merged = patch_group.sync_detailed(g.id, client=c, body=GroupMergePatch(description="south"))
    assert merged.status_code == 200, merged.content
    typed(merged.parsed, GroupAnswer, "a merge patch")
    replace = JsonPatchOperationType0(op=JsonPatchOperationType0Op.REPLACE, path="/name", value="Lorries")
    patched = patch_group.sync_detailed(g.id, client=c, body=[replace])
    assert patched.status_code == 200, patched.content
    patched = typed(patched.parsed, GroupAnswer, "a JSON Patch")
    assert (patched.description, patched.name) == ("south", "Lorries"), patched
    outside = JsonPatchOperationType0(op=JsonPatchOperationType0Op.REPLACE, path="/id", value="grp-9")
    error(patch_group.sync_detailed(g.id, client=c, body=[outside]), 400, "invalid_patch", "a patch outside the group")

    added = typed(
        add_devices.sync_detailed(g.id, client=c, body=AddDevices(devices=["d2", "d3"])).parsed,
        AddDevicesResponse200,
        "add devices",
    )
    assert added.added == ["d3"] and added.devices == ["d1", "d2", "d3"], added
    removed = typed(
        remove_device.sync_detailed(g.id, "d1", client=c).parsed, RemoveDeviceResponse200, "remove"
    )
    assert removed.removed is True, removed
    holders = typed(device_groups.sync_detailed("d3", client=c).parsed, DeviceGroups, "reverse lookup")
    assert [h.id for h in holders.groups] == [g.id], holders

    feed = typed(list_changes.sync_detailed(client=c).parsed, ChangeList, "change feed")
    assert len(feed.changes) == 5, feed
    for entry in feed.changes:
        typed(entry, Change, "a change")
        typed(entry.group, Group, "a change's group")
    assert [e.op.value for e in feed.changes] == ["created", "updated", "updated", "updated", "updated"], feed

    error(get_group.sync_detailed("grp-999", client=c), 404, "group_not_found", "a missing group")
    error(
        create_group.sync_detailed(client=c, body=GroupInput(name="   ")),
        400,
        "invalid_input",
        "an empty name",
    )
    error(list_groups.sync_detailed(client=c, limit=0), 400, "invalid_input", "limit 0")
    print("typed client session: every answer and error typed")


if __name__ == "__main__":
    main(*sys.argv[1:4])
