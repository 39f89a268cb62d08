"""Which BBB parameters may carry tenant/secret rules, and what values SET/OVERRIDE may give them.

From the spec's section 5.2; checked when a rule is saved, so a typo never reaches a node.
"""

from __future__ import annotations

import re

BOOL = r"^(true|false)$"
NUMBER = r"^[0-9]{1,9}$"  # BBB reads these as Java ints: at most 999,999,999
URL = r"^https?://[\w.-]+(?:\.[\w.-]+)+[\w._~:/?#[\]@!\$&'()*+,;=.%-]+$"
ANY = r"^.+$"
LAYOUTS = (
    r"^(CUSTOM_LAYOUT|SMART_LAYOUT|PRESENTATION_FOCUS|VIDEO_FOCUS|CAMERAS_ONLY|PARTICIPANTS_CHAT_ONLY"
    r"|PARTICIPANTS_AND_CHAT_ONLY|PRESENTATION_ONLY|MEDIA_ONLY)$"
)


def _same(pattern: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, pattern)


CREATE: dict[str, str] = {
    **_same(
        BOOL,
        "allowModsToUnmuteUsers", "allowOverrideClientSettingsOnCreateCall", "allowPromoteGuestToModerator",
        "allowStartStopRecording", "autoStartRecording", "endWhenNoModerator", "lockSettingsDisableCam",
        "lockSettingsDisableMic", "lockSettingsDisablePrivateChat", "lockSettingsDisablePublicChat",
        "lockSettingsDisableNote", "lockSettingsDisableNotes", "lockSettingsHideViewersCursor",
        "lockSettingsLockedLayout", "lockSettingsLockOnJoin", "lockSettingsLockOnJoinConfigurable",
        "meetingKeepEvents", "muteOnStart", "notifyRecordingIsOn", "preUploadedPresentationOverrideDefault",
        "record", "recordFullDurationMedia", "webcamsOnlyForModerator", "presentationConversionCacheEnabled",
    ),
    **_same(
        NUMBER,
        "duration", "endWhenNoModeratorDelayInMinutes", "learningDashboardCleanupDelayInMinutes",
        "maxParticipants", "meetingCameraCap", "meetingExpireIfNoUserJoinedInMinutes",
        "meetingExpireWhenLastUserLeftInMinutes", "maxNumPages",
    ),
    **_same(URL, "loginURL", "logo", "logoutURL", "preUploadedPresentation", "presentationUploadExternalUrl",
            "pluginManifestsFetchUrl"),
    **_same(
        ANY,
        "bannerText", "clientSettingsOverride", "copyright", "disabledFeatures", "disabledFeaturesExclude",
        "groups", "moderatorOnlyMessage", "pluginManifests", "preUploadedPresentationName",
        "presentationUploadExternalDescription", "welcome",
    ),
    "bannerColor": r"^#[a-fA-F0-9]{6}$",
    "guestPolicy": r"^(ALWAYS_ACCEPT|ALWAYS_DENY|ASK_MODERATOR)$",
    "meetingLayout": LAYOUTS,
    "meta_fullaudio-bridge": r"^(sipjs|kurento|fullaudio)$",
}

_USERDATA_BOOL = (
    "ask_for_feedback_on_logout", "auto_join_audio", "auto_share_webcam", "auto_swap_layout",
    "display_branding_area", "enable_screen_sharing", "enable_video", "force_restore_presentation_on_new_events",
    "force_listen_only", "fullaudio_bridge", "hide_controls", "hide_notifications", "hide_presentation",
    "hide_presentation_on_join", "listen_only_mode", "mirror_own_webcam", "multi_user_pen_only",
    "prefer_dark_theme", "record_video", "show_participants_on_login", "show_public_chat_on_login",
    "skip_check_audio", "skip_check_audio_on_first_join", "skip_echotest_if_previous_device",
    "skip_video_preview", "skip_video_preview_on_first_join", "outside_toggle_recording",
    "outside_toggle_self_voice",
)
JOIN: dict[str, str] = {
    **_same(URL, "errorRedirectUrl", "logoutURL", "webcamBackgroundURL", "userdata-bbb_custom_style_url"),
    **_same(BOOL, "excludeFromDashboard", "bot", *(f"userdata-bbb_{name}" for name in _USERDATA_BOOL)),
    **_same(ANY, "firstName", "lastName", "enforceLayout", *(
        f"userdata-bbb_{name}" for name in ("client_title", "custom_style", "multi_user_tools", "presenter_tools",
                                           "shortcuts"))),
    "role": r"^(VIEWER|MODERATOR)$",
    "userdata-bbb_default_layout": LAYOUTS,
    "userdata-bbb_override_default_locale": r"^[a-z]{2}$",
    "userdata-bbb_preferred_camera_profile": r"^(low-u30|low-u25|low-u20|low-u15|low-u12|low-u8|low|medium|high|hd)$",
}


def check_rule(create_join: str, mode: str, name: str, value: str | None) -> None:
    """Raise ValueError when the parameter cannot carry a rule for that call or the value is invalid."""
    lists = {"CREATE": (CREATE,), "JOIN": (JOIN,), "BOTH": (CREATE, JOIN)}[create_join]
    patterns = [table[name] for table in lists if name in table]
    if not patterns:
        where = {"CREATE": "create", "JOIN": "join", "BOTH": "create or join"}[create_join]
        raise ValueError(f"{name!r} is not a {where} parameter that rules may change")
    if mode != "BLOCK" and value is not None and not any(re.match(p, value) for p in patterns):
        raise ValueError(f"value {value!r} is not valid for {name} (expected {patterns[0]})")
