"""The Graph target: runs a work item's Graph steps against one connection (tenant).

**Contiguous Graph steps of a work item run together**: the first of them reads everything they need in one
batch, plans every step against that snapshot (each step sees the effect of the ones before it, like the AD
account of ``lifecycle.targets.ad``), then sends all their writes in one batch, chained with ``dependsOn``
so Graph applies them in step order. Each step still reports (and is journaled and audited) on its own
turn. A leaver's licences, sessions, auto-reply and ten cloud groups cost two requests.

The cloud user is the AD account's (by ``userPrincipalName``, or ``objectGUID`` = ``onPremisesImmutableId``),
or the one a step's ``user`` param names. Right after an AD create the cloud user does not exist yet
(directory sync runs every ~30 minutes): the step is rescheduled until ``LIFECYCLE_GRAPH_SYNC_WAIT_SECONDS``
after the account's ``whenCreated``, then fails with a reason.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lifecycle.errors import LifecycleError, Permanent, Retryable
from lifecycle.photos import PhotoLoader
from lifecycle.state import AuditEntry, Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph import cloudusers, groups, licences, mailboxes, managers, passes, photos, users
from lifecycle.targets.graph.protection import CloudProtection
from lifecycle.targets.graph.state import (
    CloudUser,
    Connection,
    Group,
    Plan,
    Planner,
    Snapshot,
    Write,
    parse_ad_time,
)
from lifecycle.targets.graph.transport import TRANSIENT, Request, Response, client_for, error_for

if TYPE_CHECKING:
    from lifecycle.targets import TargetContext
    from lifecycle.work import Step

USER_FIELDS = (
    "id,userPrincipalName,displayName,mail,accountEnabled,onPremisesSyncEnabled,onPremisesImmutableId,"
    "usageLocation,assignedLicenses,licenseAssignmentStates,assignedPlans,signInSessionsValidFromDateTime,"
    "employeeId,employeeHireDate,onPremisesExtensionAttributes,givenName,surname,jobTitle,department,"
    "officeLocation,companyName,mobilePhone,city,country,state,streetAddress,postalCode,employeeType,"
    "preferredLanguage"
)
# Actions that run alone (not in a group's read-plan-write batch): there is no active user to read first.
STANDALONE = {
    "create_cloud_user": cloudusers.create,
    "restore_cloud_user": cloudusers.restore,
    "create_temporary_access_pass": passes.create,
}
GROUP_FIELDS = (
    "id,displayName,groupTypes,membershipRule,onPremisesSyncEnabled,mailEnabled,securityEnabled,isAssignableToRole"
)
# Actions whose desired state already holds when there is no cloud user at all.
ABSENT_OK = {
    "set_auto_reply",
    "remove_licenses",
    "disable_mailbox",
    "delete_mailbox",
    "disable_auto_reply",
    "revoke_sessions",
    "disable_cloud_account",
    "disable_teams",
    "remove_from_cloud_groups",
    "remove_photo",
    "delete_cloud_user",
}
# Each Graph action's planner, from the module that owns it.
PLANNERS: dict[str, Planner] = {
    "assign_licenses": licences.plan_assign_licenses,
    "remove_licenses": licences.plan_remove_licenses,
    "disable_teams": licences.plan_disable_teams,
    "create_mailbox": mailboxes.plan_create_mailbox,
    "disable_mailbox": mailboxes.plan_disable_mailbox,
    "delete_mailbox": mailboxes.plan_delete_mailbox,
    "set_auto_reply": mailboxes.plan_set_auto_reply,
    "disable_auto_reply": mailboxes.plan_disable_auto_reply,
    "revoke_sessions": users.plan_revoke_sessions,
    "disable_cloud_account": users.plan_disable_cloud_account,
    "enable_cloud_account": users.plan_enable_cloud_account,
    "add_to_cloud_groups": groups.plan_add_to_cloud_groups,
    "remove_from_cloud_groups": groups.plan_remove_from_cloud_groups,
    "sync_cloud_groups": groups.plan_sync_cloud_groups,
    "set_photo": photos.plan_set_photo,
    "remove_photo": photos.plan_remove_photo,
    "modify_cloud_user": users.plan_modify_cloud_user,
    "delete_cloud_user": users.plan_delete_cloud_user,
    "set_cloud_manager": managers.plan_set_cloud_manager,
}


class GraphTarget:
    """Runs Graph steps; one per worker thread, sharing the process's client."""

    def __init__(self, name: str, context: TargetContext) -> None:
        try:
            # The connection's own tenant and credential; a name no connection has is refused, never served by
            # another tenant (docs/deployment.md, "Many tenants").
            settings = context.settings.graph_settings(name)
        except KeyError as exc:
            raise Permanent(
                f"Graph: {exc.args[0]}; people routed to {name!r} are served by no other tenant. Add the "
                "connection (or leave Microsoft 365 steps out for them), then replay."
            ) from None
        except ValueError as exc:
            raise Retryable(f"Graph: {exc}", retry_after=context.settings.setup_retry_seconds) from None
        self.name = name
        self.settings = settings
        self.client = client_for(settings)
        photo_loader = PhotoLoader(
            max_bytes=self.settings.photo_max_bytes,
            allowed_hosts=tuple(self.settings.photo_allowed_hosts),
            ca_file=self.settings.graph_ca_file,
        )
        self.conn = Connection(name, self.settings, self.client, photo_loader)
        self.protection = CloudProtection.from_mapping(context.mapping)
        self.store = context.store
        # Results of later steps of the same group, computed and written by the group's first step.
        self._ahead: dict[str, StepResult | LifecycleError] = {}
        self._ahead_for: dict[str, Any] | None = None

    def close(self) -> None:
        self._ahead.clear()

    # Entry -------------------------------------------------------------------------------------------------
    def run(self, context: StepContext) -> StepResult:
        # Results computed ahead belong to this delivery only (the worker makes one requested_by per delivery).
        if self._ahead_for is not context.requested_by:
            self._ahead, self._ahead_for = {}, context.requested_by
        ahead = self._ahead.pop(context.step.key, None)
        if isinstance(ahead, StepResult):
            return ahead
        if isinstance(ahead, LifecycleError):
            raise ahead
        group = self._group(context)
        try:
            standalone = STANDALONE.get(context.step.action)
            if standalone is not None:
                return standalone(self, context)
            results = self._run_group(context, group)
        except LifecycleError as exc:
            self._name_tenant(exc)
            raise
        for result in results.values():
            if isinstance(result, LifecycleError):
                self._name_tenant(result)
        for step in group[1:]:
            if step.key in results:
                self._ahead[step.key] = results[step.key]
        first = results[context.step.key]
        if isinstance(first, LifecycleError):
            raise first
        return first

    def _name_tenant(self, error: LifecycleError) -> None:
        """Say which connection and tenant an error is about (the audit, dead letters and logs show it)."""
        text = str(error.args[0]) if error.args else str(error)
        label = f"Graph [{self.name}, tenant {self.client.tenant}]:"
        if label not in text:
            text = f"{label} {text[len('Graph: ') :]}" if text.startswith("Graph: ") else f"{label} {text}"
            error.args = (text, *error.args[1:])

    def _group(self, context: StepContext) -> list[Step]:
        """This step and the Graph steps right after it that address the same cloud user."""
        steps = context.item.steps
        index = next(i for i, s in enumerate(steps) if s.key == context.step.key)
        group = [steps[index]]
        for step in steps[index + 1 :]:
            if step.system != "graph" or step.target != context.step.target or step.action in STANDALONE:
                break
            if int(step.params.get("after_days", 0) or 0) > 0:
                break  # staged by the worker (delete_cloud_user 30 days later): never written ahead with this group
            if step.params.get("user") != context.step.params.get("user"):
                break
            group.append(step)
        return group

    def _run_group(self, context: StepContext, group: list[Step]) -> dict[str, StepResult | LifecycleError]:
        results: dict[str, StepResult | LifecycleError] = {}
        try:
            user_key, absent = self._user_key(context)
            snapshot = self._read(context, group, user_key) if absent is None else None
        except LifecycleError as exc:
            return {context.step.key: exc}
        if snapshot is None:
            # No cloud user (yet): each step decides whether that is fine (a leaver) or worth waiting for.
            for step in group:
                try:
                    results[step.key] = self._absent(context, step, absent or "not found")
                except LifecycleError as exc:
                    results[step.key] = exc
                    break
            return results
        plans: list[tuple[Step, Plan]] = []
        try:
            # Before anything is planned or written: a refusal leaves every step of the group undone.
            self.protection.check_user(context, snapshot)
        except LifecycleError as exc:
            return {context.step.key: exc}
        for step in group:
            try:
                self.protection.check_groups(step, snapshot)
                plan = self._plan(context, step, snapshot)
            except LifecycleError as exc:
                results[step.key] = exc
                break
            plans.append((step, plan))
            if plan.pending is not None:
                break  # later steps may need what this one waits for (a mailbox)
        if context.dry_run:
            for step, plan in plans:
                if plan.writes:
                    plan.result.outcome = "dry_run"
                results[step.key] = plan.result
            return results
        results.update(self._write(context, plans))
        return results

    # Reading -----------------------------------------------------------------------------------------------
    def _user_key(self, context: StepContext) -> tuple[str, str | None]:
        """How to address the cloud user (UPN or id), or (.., why it cannot be found yet)."""
        override = context.step.params.get("user")
        if override:
            return str(override), None
        if not _has_ad(context):
            # A cloud-only item: the person's user is the one carrying the anchor.
            return cloudusers.user_key(self, context)
        account = context.ad_account()
        if account is None:
            return "", "the person has no AD account (and the step names no cloud user)"
        if self.settings.graph_match == "immutable_id":
            guid = account.first("objectGUID")
            if not guid:
                raise Permanent(f"Graph: the AD account {account.dn} has no objectGUID to match its cloud user by")
            immutable = base64.b64encode(uuid.UUID(str(guid)).bytes_le).decode("ascii")
            sdk = self.client.sdk
            from kiota_abstractions.base_request_configuration import RequestConfiguration
            from msgraph.generated.users.users_request_builder import UsersRequestBuilder

            config = RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    filter=f"onPremisesImmutableId eq '{immutable}'", select=["id"]
                )
            )
            answer = self.client.send(self.client.request(sdk.users.to_get_request_information(config)))
            if not answer.ok:
                raise error_for(answer, "find the cloud user by onPremisesImmutableId")
            found = answer.body.get("value", [])
            if not found:
                return "", f"no cloud user has onPremisesImmutableId {immutable} (objectGUID {guid})"
            return str(found[0]["id"]), None
        upn = account.first("userPrincipalName")
        if not upn:
            raise Permanent(f"Graph: the AD account {account.dn} has no userPrincipalName to match its cloud user by")
        return str(upn), None

    def _read(self, context: StepContext, group: list[Step], user_key: str) -> Snapshot | None:
        """One batch: the user and whatever the group's steps need (memberships, mailbox, plans, photo)."""
        sdk = self.client.sdk
        user = sdk.users.by_user_id(user_key)
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

        config = RequestConfiguration(
            query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
                select=USER_FIELDS.split(",")
            )
        )
        requests: dict[str, Request] = {"user": self.client.request(user.to_get_request_information(config))}
        actions = {s.action for s in group}
        if actions & {"add_to_cloud_groups", "remove_from_cloud_groups", "sync_cloud_groups"}:
            from msgraph.generated.users.item.member_of.graph_group.graph_group_request_builder import (
                GraphGroupRequestBuilder,
            )

            member_config = RequestConfiguration(
                query_parameters=GraphGroupRequestBuilder.GraphGroupRequestBuilderGetQueryParameters(
                    select=GROUP_FIELDS.split(","), top=999
                )
            )
            requests["memberOf"] = self.client.request(
                user.member_of.graph_group.to_get_request_information(member_config)
            )
            wanted: list[str] = []
            for step in group:
                if step.action == "add_to_cloud_groups":
                    wanted += step.params.get("group_ids", [])
                elif step.action == "sync_cloud_groups":
                    wanted += step.params.get("desired", [])
            from msgraph.generated.groups.item.group_item_request_builder import GroupItemRequestBuilder

            group_config = RequestConfiguration(
                query_parameters=GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(
                    select=GROUP_FIELDS.split(",")
                )
            )
            for group_id in dict.fromkeys(g.lower() for g in wanted):
                requests[f"group:{group_id}"] = self.client.request(
                    sdk.groups.by_group_id(group_id).to_get_request_information(group_config)
                )
        if actions & {"set_auto_reply", "disable_auto_reply", "create_mailbox"}:
            requests["mailbox"] = self.client.request(user.mailbox_settings.to_get_request_information())
        if actions & {"create_mailbox", "disable_mailbox", "delete_mailbox", "disable_teams"}:
            requests["licenseDetails"] = self.client.request(user.license_details.to_get_request_information())
        if "set_cloud_manager" in actions:
            base = f"/users/{quote(user_key, safe='@')}"
            requests["manager"] = Request("GET", f"{base}/manager?$select=id")
        if actions & {"set_photo", "remove_photo"}:
            requests["photo"] = self.client.request(user.photo.content.to_get_request_information())
        # Directory roles and every group, nested ones included, for the protection check (one more item of
        # the same batch: https://learn.microsoft.com/en-us/graph/api/user-list-transitivememberof).
        from msgraph.generated.users.item.transitive_member_of.transitive_member_of_request_builder import (
            TransitiveMemberOfRequestBuilder,
        )

        transitive_config = RequestConfiguration(
            query_parameters=TransitiveMemberOfRequestBuilder.TransitiveMemberOfRequestBuilderGetQueryParameters(
                top=999
            )
        )
        requests["transitiveMemberOf"] = self.client.request(
            user.transitive_member_of.to_get_request_information(transitive_config)
        )
        names = list(requests)
        answers = dict(zip(names, self.client.batch([requests[n] for n in names]), strict=True))
        first = answers["user"]
        if first.status == 404:
            return None
        if not first.ok:
            raise error_for(first, f"read the cloud user {user_key}")
        snapshot = Snapshot(CloudUser.from_json(first.body))
        for name, answer in answers.items():
            if name == "transitiveMemberOf":
                if not answer.ok:
                    raise error_for(answer, "read the user's roles and groups (transitiveMemberOf)")
                snapshot.transitive_member_of = list(answer.body.get("value", []))
                snapshot.transitive_member_of += self._next_pages(answer.body.get("@odata.nextLink"))
            elif name == "memberOf":
                if not answer.ok:
                    raise error_for(answer, "read the user's groups")
                entries = list(answer.body.get("value", []))
                entries += self._next_pages(answer.body.get("@odata.nextLink"))
                snapshot.member_of = {g.id: g for g in (Group.from_json(e) for e in entries)}
            elif name.startswith("group:"):
                if answer.status == 404:
                    snapshot.groups[name[6:]] = None
                elif not answer.ok:
                    raise error_for(answer, f"read the group {name[6:]}")
                else:
                    snapshot.groups[name[6:]] = Group.from_json(answer.body)
            elif name == "manager":
                if answer.ok:
                    snapshot.manager = str(answer.body.get("id") or "") or None
                elif answer.status != 404:
                    raise error_for(answer, "read the user's manager")
            elif name == "mailbox":
                if answer.ok:
                    snapshot.mailbox = answer.body
                elif answer.status in TRANSIENT or answer.status in (401, 403):
                    raise error_for(answer, "read the mailbox settings")
                else:
                    snapshot.mailbox_error = answer
            elif name == "licenseDetails":
                if not answer.ok:
                    raise error_for(answer, "read the licence details")
                snapshot.license_plans = {
                    str(d.get("skuId")).lower(): {
                        str(p.get("servicePlanId")).lower() for p in d.get("servicePlans") or []
                    }
                    for d in answer.body.get("value", [])
                }
            elif name == "photo":
                snapshot.photo_read = True
                if answer.ok:
                    snapshot.photo = answer.body if isinstance(answer.body, bytes) else None
                elif answer.status != 404:
                    raise error_for(answer, "read the profile photo")
        return snapshot

    def _next_pages(self, link: str | None) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        while link:
            relative = link[len(self.client.base_url) :] if link.startswith(self.client.base_url) else link
            answer = self.client.send(Request("GET", relative))
            if not answer.ok:
                raise error_for(answer, "read the next page")
            entries += answer.body.get("value", [])
            link = answer.body.get("@odata.nextLink")
        return entries

    def _absent(self, context: StepContext, step: Step, why: str) -> StepResult:
        """No cloud user: fine for removals of a long-gone user, worth waiting for right after an AD create."""
        # A step that names its cloud user is about a cloud-only user: no AD account to wait for.
        account = None if step.params.get("user") or not _has_ad(context) else context.ad_account()
        created = parse_ad_time(account.first("whenCreated")) if account is not None else None
        now = datetime.now(UTC)
        wait = timedelta(seconds=self.settings.graph_sync_wait_seconds)
        if created is not None and now - created < wait:
            raise Retryable(
                f"Graph: no cloud user yet for {account.dn if account else '?'} ({why}); directory sync has not "
                f"created it; looking again in {self.settings.graph_poll_seconds:.0f} s",
                retry_after=self.settings.graph_poll_seconds,
            )
        if step.action in ABSENT_OK:
            return StepResult("unchanged", message=f"no cloud user ({why}): nothing to change for a leaver")
        if not _has_ad(context) and not step.params.get("user"):
            if context.dry_run and any(data.get(cloudusers.PLANNED) for data in context.facts.values()):
                return StepResult("dry_run", message="would run on the cloud user the step before creates")
            raise Permanent(
                f"Graph: no cloud user ({why}): a create_cloud_user step before this one makes it (a joiner), "
                "restore_cloud_user brings back a deleted one (a rehire)"
            )
        since = f" {(now - created).total_seconds() / 60:.0f} min after the AD account was created" if created else ""
        raise Permanent(
            f"Graph: no cloud user{since} ({why}): is the account's OU in directory sync's scope, and does its "
            "userPrincipalName (or objectGUID) match? Replay this work item once the cloud user exists."
        )

    def checked_snapshot(self, context: StepContext) -> Snapshot | StepResult:
        """The step's cloud user read with what the protection check needs, checked; or the absent result."""
        user_key, absent = self._user_key(context)
        snapshot = self._read(context, [context.step], user_key) if absent is None else None
        if snapshot is None:
            return self._absent(context, context.step, absent or "not found")
        self.protection.check_user(context, snapshot)
        return snapshot

    def deliver_secret(self, context: StepContext, user: dict[str, Any], secret: str, *, kind: str) -> str:
        """Mail a new cloud user's password or Temporary Access Pass to its manager; what happened, in words.

        The secret exists only in memory (never logged, stored or audited); without a mail channel it is
        dropped, and the step says so.
        """
        if self.settings.password_delivery != "graph_mail":  # noqa: S105 - a channel name
            return f"the {kind} was not delivered (LIFECYCLE_PASSWORD_DELIVERY is none)"
        from lifecycle.targets.graph.mail import PasswordMailer

        facts = cloudusers.delivery_facts(self, str(user["id"]))
        mailer = PasswordMailer(self.settings)
        return mailer.deliver(facts.get("upn") or str(user["id"]), facts, secret, kind=kind)

    # Planning ----------------------------------------------------------------------------------------------
    def _plan(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return PLANNERS[step.action](self.conn, context, step, snap)

    # Writing -----------------------------------------------------------------------------------------------
    def _write(self, context: StepContext, plans: list[tuple[Step, Plan]]) -> dict[str, StepResult | LifecycleError]:
        """Send every planned write in step order, stopping at the first that fails; each step's result.

        The writes form one chain: a failure stops everything after it, in the same batch (``dependsOn``), in
        later batches and before a binary upload that follows. A step whose writes were all applied reports
        its result; the failing step reports its error, and what of it was applied before is audited as
        changed now (the worker dead-letters or reschedules the item, and would not); steps after it were not
        touched and plan again, from what Graph then says, on the next attempt.
        """
        owners: list[tuple[str, Write]] = [(step.key, w) for step, plan in plans for w in plan.writes]
        answers: list[Response] = []
        batchable: list[Write] = []
        # Why the rest was not sent when the tenant's gate closed after some writes were applied (they are
        # reported; raising would lose them).
        not_sent: list[Retryable] = []

        def settled(write: Write, answer: Response) -> bool:
            return answer.ok or (write.tolerated is not None and write.tolerated(answer))

        def flush() -> bool:
            writes = list(batchable)
            batchable.clear()

            def accept(index: int, answer: Response) -> bool:
                tolerated = writes[index].tolerated
                return tolerated is not None and tolerated(answer)

            try:
                got = self.client.batch([w.request for w in writes], chained=True, accept=accept)
            except Retryable as exc:
                if not answers:
                    raise  # nothing applied: the group is simply run again
                not_sent.append(exc)
                return False
            answers.extend(got)
            return all(settled(w, a) for w, a in zip(writes, got, strict=True))

        for _, write in owners:
            if write.request.content is None:
                batchable.append(write)
                continue
            # Binary bodies (photos) go alone, in order, and only when everything before them was applied.
            if not flush():
                break
            try:
                answer = self.client.send(write.request)
            except Retryable as exc:
                if not answers:
                    raise
                not_sent.append(exc)
                break
            answers.append(answer)
            if not settled(write, answer):
                break
        else:
            flush()
        failure: int | None = next(
            (i for i, (_, w) in enumerate(owners) if i >= len(answers) or not settled(w, answers[i])), None
        )
        results: dict[str, StepResult | LifecycleError] = {}
        position = 0
        for step, plan in plans:
            first, position = position, position + len(plan.writes)
            if failure is not None and failure < first:
                break  # not applied: planned again on its turn
            if failure is not None and failure < position:
                applied = [w for w in plan.writes[: failure - first]]
                if applied:
                    self._audit_applied(context, step, applied, plan.result)
                results[step.key] = self._failed(owners[failure][1], answers, failure, not_sent)
                break
            if plan.pending is not None:
                if plan.writes:
                    self._audit_partial(context, step, plan.result)
                results[step.key] = plan.pending
                continue
            if plan.result.outcome == "dry_run":
                plan.result.outcome = "changed"
            results[step.key] = plan.result
        return results

    @staticmethod
    def _failed(write: Write, answers: list[Response], index: int, not_sent: list[Retryable]) -> LifecycleError:
        if index >= len(answers):
            if not_sent:
                return not_sent[0]
            return Retryable(f"Graph: {write.what}: not sent because an earlier write failed")
        explained = write.explain(answers[index]) if write.explain is not None else None
        if explained is not None:
            return explained
        if write.replan is not None and write.replan(answers[index]):
            return Retryable(f"Graph: {write.what}: the user changed since it was read ({answers[index].message})")
        return error_for(answers[index], write.what)

    def _audit_applied(self, context: StepContext, step: Step, applied: list[Write], result: StepResult) -> None:
        """Audit the writes of a failing step that Graph applied before the failure (what the step changed)."""
        changes = [c for w in applied for c in w.changes] or [Change("graph", None, w.what) for w in applied]
        partial = StepResult("changed", changes=changes, message=f"{len(applied)} of its writes applied")
        self._audit_partial(context, step, partial, why="before a later write of the step failed")

    def _audit_partial(
        self, context: StepContext, step: Step, result: StepResult, *, why: str = "waiting for the mailbox"
    ) -> None:
        """Audit writes of a step that is not finished yet (it is rescheduled and will report again)."""
        event = context.item.event
        self.store.append_audit(
            AuditEntry(
                at=datetime.now(UTC),
                work_id=context.item.work_id,
                user_id=event.user_id,
                step=step.key,
                action=step.action,
                target=f"graph:{self.name}",
                outcome="changed",
                dn=None,
                changes=tuple(result.changes),
                requested_by=context.requested_by,
                message=f"{result.message}; {why}".strip("; "),
            )
        )


def _has_ad(context: StepContext) -> bool:
    """Whether the item has AD steps (a cloud-only item never asks AD for the person's account)."""
    return any(step.system == "ad" for step in context.item.steps)
