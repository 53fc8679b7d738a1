"""API models of companies, users and API keys."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
)

from leadline_kit.identity import Role
from leadline_kit.text import ONE_LINE

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _domain(value: str) -> str:
    try:
        ascii_domain = value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError("not a valid domain name") from exc
    labels = ascii_domain.split(".")
    if (
        len(labels) < 2
        or len(ascii_domain) > 253
        or not all(_LABEL.match(label) for label in labels)
    ):
        raise ValueError("not a valid domain name")
    return ascii_domain


def _email(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return checked.normalized.lower()


Domain = Annotated[str, Field(max_length=253), AfterValidator(_domain)]
Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=ONE_LINE)]
OptionalName = Annotated[str, Field(max_length=200, pattern=ONE_LINE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdminIn(Strict):
    email: Email
    name: OptionalName = ""


class CompanyCreate(Strict):
    name: Name
    domains: list[Domain] = Field(default_factory=list, max_length=50)
    administrator: AdminIn


class CompanyPatch(Strict):
    name: Name | None = None
    domains: list[Domain] | None = Field(default=None, max_length=50)
    block_own_domains: bool | None = Field(default=None, strict=True)  # 0 is not false
    mailbox_limit: StrictInt | None = Field(default=None, ge=0, le=1_000_000)  # false is not 0


class CompanyOut(BaseModel):
    id: uuid.UUID
    name: str
    domains: list[str]
    block_own_domains: bool
    mailbox_limit: int | None
    created_at: datetime


class UserCreate(Strict):
    email: Email
    name: OptionalName = ""
    role: Role


class UserPatch(Strict):
    name: OptionalName | None = None
    role: Role | None = None


class UserOut(BaseModel):
    id: uuid.UUID
    company_id: uuid.UUID
    email: str
    name: str
    role: str
    created_at: datetime


class InvitationOut(BaseModel):
    """An invitation as the administrator sees it: never its code, which only the invitee
    receives."""

    sent_to: str
    created_at: datetime
    expires_at: datetime


class UserInvited(UserOut):
    invitation: InvitationOut = Field(
        description="the code went to the user's address by email, and only there"
    )


class InvitationClaim(Strict):
    invitation_code: str = Field(min_length=10, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    email: Email = Field(description="the address the invitation was sent to")
    key_name: OptionalName = ""


class ApiKeyCreate(Strict):
    name: OptionalName = ""
    expires_at: AwareDatetime | None = Field(
        None, description="the key stops working then; none: until revoked"
    )

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            try:
                in_utc = value.astimezone(UTC)
            except OverflowError as exc:
                raise ValueError("expires_at is out of range") from exc
            if in_utc <= datetime.now(UTC) or in_utc.year > 9000:
                raise ValueError("expires_at must lie in the future (and before the year 9000)")
            return in_utc
        return value


class ApiKeyInfo(BaseModel):
    id: uuid.UUID
    name: str
    user_id: uuid.UUID
    created_at: datetime
    expires_at: datetime | None


class ApiKeyOut(ApiKeyInfo):
    key: str = Field(description="shown only once, at creation")


class CompanyCreated(BaseModel):
    company: CompanyOut
    administrator: UserOut
    api_key: ApiKeyOut


class UserProvision(Strict):
    """A user the operator provisions for a CRM that signs its users in itself (SSO)."""

    email: Email
    name: OptionalName = ""
    role: Role
    key_name: OptionalName = ""


class UserProvisioned(BaseModel):
    user: UserOut
    api_key: ApiKeyOut
