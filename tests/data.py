"""A small hand-made source whose correct migration is known exactly (see EXPECTED)."""
from __future__ import annotations

import datetime as dt

from bson import ObjectId

T0 = dt.datetime(2024, 3, 1, 12, 0, 0)
T1 = dt.datetime(2024, 6, 1, 12, 0, 0)
SECRETS = ["$2b$10$aliceALICEaliceALICEhash", "$2b$10$bobBOBbobBOBhash", "MFASECRETALICE",
           "PASSKEYPUBLICKEYBOB", "CLIENTSECRET-ONE", "CLIENTSECRET-TWO", "MFASECRETBOBOLD", "CLIENTSECRET-COPY",
           "TOKENHASH-ONE", "TOKENHASH-TWO", "TOKENHASH-NOEMAIL", "TOKENHASH-GHOST", "TOKENHASH-BADDATE"]


def oid(n: int) -> ObjectId:
    return ObjectId(f"65a0000000000000000{n:05d}")


def user(n, user_id, username, email, **extra):
    doc = {"_id": oid(n), "userId": user_id, "username": username, "email": email,
           "firstName": username.title(), "lastName": "Tester", "identityProvider": "local",
           "mfaEnabled": False, "emailVerified": True, "signCount": 0, "canManageApps": False,
           "banned": False, "createdAt": T0, "updatedAt": T0, "__v": 0}
    doc.update(extra)
    return doc


def documents() -> dict[str, list[dict]]:
    users = [
        user(1, "000000000001", "alice", "alice@example.com", password=SECRETS[0], mfaSecret=SECRETS[2],
             mfaEnabled=True, providerRoles=["standardUser", "oauthUser"], oauthClientAppIds=[100001]),
        user(2, "000000000002", "bob", "bob@example.com", password=SECRETS[1], passkeyPublicKey=SECRETS[3],
             canManageApps=True, providerRoles=["standardUser"], updatedAt=T1),
        user(3, "000000000003", "carol", "Carol@Example.com", providerRoles="standardUser"),
        user(4, "000000000004", "dave", "dave@example.com", providerRoles=["standardUser", "standardUser", 7]),
        user(5, "000000000005", "erin", "erin@example.com"),
        user(6, "000000000002", "bob-old", "bob-old@example.com", providerRoles=["standardUser"],
             password=SECRETS[1], mfaSecret=SECRETS[6], passkeyPublicKey=SECRETS[3]),  # older dup key
        user(7, "000000000007", "carol2", "carol@EXAMPLE.com", createdAt=T1, providerRoles=["standardUser"]),
        {"_id": oid(8), "username": "nokey", "email": "nokey@example.com"},
        user(9, "000000000009", "frank", "frank@example.com", createdAt="not-a-date"),
        user(10, 10, "grace", "grace@example.com", providerRoles=["oauthUser"], identityProvider="github",
             identityProviderUserId=4242),
    ]
    apps = [
        {"_id": oid(101), "oauthClientAppId": "100001", "clientId": "a" * 64, "clientSecret": SECRETS[4],
         "oauthAppName": "Legacy app", "redirectUri": "https://legacy.example.com/cb", "accessTokenValidity": 3600,
         "isPublicClient": False, "createdAt": T0, "updatedAt": T0},
        {"_id": oid(102), "oauthClientAppId": "3f0c1c5e-8d1e-4c7b-9a53-2f9a3c4b5d6e", "clientId": "b" * 64,
         "clientSecret": SECRETS[5], "oauthAppName": "New app", "owner": "000000000002",
         "isPublicClient": False, "createdAt": T0, "updatedAt": T0},
        {"_id": oid(103), "oauthClientAppId": "100003", "clientId": "c" * 64, "oauthAppName": "Orphan",
         "owner": "999999999999", "isPublicClient": True, "createdAt": T0, "updatedAt": T0},
        {"_id": oid(104), "oauthClientAppId": "100004", "clientId": "b" * 64, "oauthAppName": "Copycat", "clientSecret": SECRETS[7],
         "owner": "000000000001", "createdAt": T1, "updatedAt": T1},
        {"_id": oid(105), "oauthClientAppId": "100005", "clientId": "e" * 64, "oauthAppName": "Ownerless",
         "isPublicClient": True, "createdAt": T0, "updatedAt": T0},
    ]
    new_app = apps[1]["oauthClientAppId"]
    roles = [
        {"_id": oid(201), "oauthRoleId": "uri:oneidp:oauth::100001:role/reader", "oauthClientAppId": "100001",
         "oauthClientId": "a" * 64, "oauthRoleName": "reader", "owner": "000000000001", "oauthUserIds": ["*"],
         "createdAt": T0, "updatedAt": T0},
        {"_id": oid(202), "oauthRoleId": f"uri:oneidp:oauth::{new_app}:role/admin", "oauthClientAppId": new_app,
         "oauthClientId": "b" * 64, "oauthRoleName": "admin", "owner": "000000000002",
         "oauthUserIds": ["000000000001", 3, "999999999999"], "createdAt": T0, "updatedAt": T0},
        {"_id": oid(203), "oauthRoleId": "uri:oneidp:oauth::nope:role/x", "oauthClientAppId": "nope",
         "oauthRoleName": "x", "oauthUserIds": [], "createdAt": T0, "updatedAt": T0},
        {"_id": oid(204), "oauthRoleId": f"uri:oneidp:oauth::{new_app}:role/writer", "oauthClientAppId": new_app,
         "oauthRoleName": "writer", "owner": "000000000002", "oauthUserIds": ["*", "000000000002"],
         "createdAt": T0, "updatedAt": T0},
        {"_id": oid(205), "oauthRoleId": f"uri:oneidp:oauth::{new_app}:role/admin2", "oauthClientAppId": new_app,
         "oauthRoleName": "admin", "oauthUserIds": ["000000000004"], "createdAt": T1, "updatedAt": T1},
    ]
    consents = [
        {"_id": oid(301), "consentId": "consent-1", "userId": "000000000001", "oauthClientAppId": "100001",
         "clientId": "a" * 64, "consentedScopes": ["openid", "profile", "email"], "firstAuthAt": T0,
         "lastAuthAt": T1, "createdAt": T0, "updatedAt": T1},
        {"_id": oid(302), "consentId": "consent-2", "userId": "000000000002", "oauthClientAppId": new_app,
         "clientId": "b" * 64, "consentedScopes": ["openid", "openid"], "firstAuthAt": T0, "lastAuthAt": T0,
         "createdAt": T0, "updatedAt": T0},  # a scope twice: one element reject
        {"_id": oid(303), "consentId": "consent-3", "userId": "000000000001", "oauthClientAppId": "100001",
         "consentedScopes": ["openid"], "createdAt": T1, "updatedAt": T1},  # a second consent of (alice, app 1)
        {"_id": oid(304), "consentId": "consent-4", "userId": "999999999999", "oauthClientAppId": "100001",
         "consentedScopes": ["openid"], "createdAt": T0, "updatedAt": T0},  # no such user
        {"_id": oid(305), "consentId": "consent-5", "userId": 3, "oauthClientAppId": "100004",
         "consentedScopes": ["openid"], "createdAt": T0, "updatedAt": T0},  # the app was rejected
        {"_id": oid(306), "userId": "000000000003", "oauthClientAppId": "100001", "createdAt": T0},  # no consentId
        {"_id": oid(307), "consentId": "consent-7", "userId": "000000000005", "oauthClientAppId": "100005",
         "consentedScopes": "openid", "lastAuthAt": "2024-06-01T12:00:00Z", "createdAt": T0, "updatedAt": T0,
         "__v": 0},
    ]
    invitations = [
        {"_id": oid(401), "inviteId": "invite-1", "email": "new@example.com", "tokenHash": SECRETS[8],
         "invitedBy": "bob@example.com", "providerRoles": ["beta-tester"], "canManageApps": False,
         "expiresAt": T1, "acceptedAt": None, "revokedAt": None, "createdAt": T0, "updatedAt": T0},
        {"_id": oid(402), "inviteId": "invite-2", "email": "carol@example.com", "tokenHash": SECRETS[9],
         "invitedBy": "bob@example.com", "providerRoles": ["standardUser", ""], "canManageApps": True,
         "expiresAt": T1, "acceptedAt": T1, "acceptedUserId": "000000000003", "createdAt": T0, "updatedAt": T1},
        {"_id": oid(403), "inviteId": "invite-3", "tokenHash": SECRETS[10], "invitedBy": "bob@example.com",
         "createdAt": T0, "updatedAt": T0},  # no email
        {"_id": oid(404), "inviteId": "invite-4", "email": "ghost@example.com", "tokenHash": SECRETS[11],
         "acceptedUserId": "999999999999", "canManageApps": 1, "createdAt": T0, "updatedAt": T0},
        {"_id": oid(405), "inviteId": "invite-5", "email": "late@example.com", "tokenHash": SECRETS[12],
         "expiresAt": "soon", "createdAt": T0, "updatedAt": T0},
    ]
    settings = [
        {"_id": oid(501), "key": "global", "registrationEnabled": True, "passwordResetEnabled": True,
         "appCreationEnabled": False, "allowAllUsersManageApps": False, "maintenanceMode": False,
         "maintenanceMessage": "", "allowedEmailDomains": ["example.com", "acme.test"], "socialLoginEnabled": True,
         "updatedBy": "bob@example.com", "createdAt": T0, "updatedAt": T1},
        {"_id": oid(502), "key": "global", "registrationEnabled": False, "createdAt": T0, "updatedAt": T0},  # older copy
        {"_id": oid(503), "key": "beta", "maintenanceMode": "maybe", "createdAt": T0, "updatedAt": T0},
    ]
    return {"users": users, "oauthClientApps": apps, "oauthRoles": roles, "userAppConsents": consents,
            "invitations": invitations, "appSettings": settings}


EXPECTED_ROWS = {
    "users": 6, "roles": 4, "user_roles": 6, "permissions": 9, "role_permissions": 9,
    "oauth_client_apps": 4, "client_roles": 3, "client_role_users": 3,
    "user_app_consents": 3, "user_app_consent_scopes": 5, "invitations": 3, "invitation_roles": 2,
    "app_settings": 1, "app_setting_email_domains": 2, "sessions": 0,
}
EXPECTED_REJECTS = {  # (collection, scope, reason_code) -> count
    ("users", "document", "duplicate_key"): 1,
    ("users", "document", "duplicate_email"): 1,
    ("users", "document", "missing_key"): 1,
    ("users", "document", "invalid_date"): 1,
    ("users", "element", "duplicate_element"): 1,
    ("users", "element", "invalid_element"): 1,
    ("oauthClientApps", "document", "duplicate_client_id"): 1,
    ("oauthClientApps", "field", "dangling_owner"): 1,
    ("oauthClientApps", "field", "missing_owner"): 1,
    ("oauthRoles", "document", "dangling_app"): 1,
    ("oauthRoles", "document", "duplicate_role_name"): 1,
    ("oauthRoles", "element", "dangling_user"): 1,
    ("userAppConsents", "document", "dangling_app"): 1,
    ("userAppConsents", "document", "dangling_user"): 1,
    ("userAppConsents", "document", "duplicate_consent"): 1,
    ("userAppConsents", "document", "missing_key"): 1,
    ("userAppConsents", "element", "duplicate_element"): 1,
    ("invitations", "document", "invalid_date"): 1,
    ("invitations", "document", "missing_required"): 1,
    ("invitations", "element", "invalid_element"): 1,
    ("invitations", "field", "dangling_accepted_user"): 1,
    ("appSettings", "document", "duplicate_key"): 1,
    ("appSettings", "document", "invalid_type"): 1,
}
