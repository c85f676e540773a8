"""The built-in catalog: facts about common remote access and RMM tools, for detection.

What this is: facts compiled by the Rampart authors from public knowledge
(vendor documentation, package contents, published advisories and incident
reports) so that an agent can recognise a tool by its process name, its
install location, its service, the ports it listens on and the domains it
talks to (requirements H1, H3, N2 and S1).

Its limits, which every detection built on it inherits:

- It is not exhaustive. Vendors rename binaries, move install directories and
  add domains; a fact missing here is a detection missed, never a proof of
  absence. Import the LOLRMM feed (:func:`rampart.catalog.load_feed`) to
  extend it.
- Names identify a tool only as well as the name is unique: a renamed binary
  is not found by name, and a few names are shared on purpose (``vncviewer``
  belongs to several VNC implementations).
- ``platforms`` lists where the tool can be recognised from these facts, so
  ``linux`` is set only for tools with Linux executable names or paths here.
- Install paths list the locations known here. Where the locations on one
  operating system are unknown the tool has none for it, and portable use is
  then judged by temporary and per-user locations only.
- Vulnerable version ranges are listed only where the fixed version is
  published; a version not listed as vulnerable is not thereby safe.
- Ports that ordinary services share (443, 22, 80, ...) are kept as facts but
  never indexed (:data:`rampart.catalog.model.UNINDEXED_PORTS`).
"""

from __future__ import annotations

import functools

from .model import Catalog, Category, Tool, VulnerableRange, make_tool

__all__ = ["BUILTIN_TOOLS", "builtin_catalog"]


def _items(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _v(cve: str, below: str, introduced: str = "", platforms: str = "") -> VulnerableRange:
    return VulnerableRange(cve=cve, below=below, introduced=introduced,
                           platforms=_items(platforms))  # type: ignore[arg-type]  # checked on build


def _t(
    name: str,
    category: Category,
    platforms: str,
    *,
    slug: str | None = None,
    exes: str = "",
    paths: str = "",
    services: str = "",
    ports: tuple[int, ...] = (),
    domains: str = "",
    vulns: tuple[VulnerableRange, ...] = (),
    aliases: str = "",
) -> Tool:
    return make_tool(
        name, slug=slug, category=category, platforms=_items(platforms), executables=_items(exes),
        install_paths=_items(paths), services=_items(services), ports=ports, domains=_items(domains),
        vulnerable_versions=vulns, aliases=_items(aliases), sources=("builtin",),
    )


#: RFB (VNC) display ports: 5900 + display number, displays :0 to :99 (Xvnc -rfbport default, x11vnc
#: -autoport), except 5938, TeamViewer's registered port (a VNC server there is found by the RFB probe);
#: the HTTP viewer ports 5800-5899 are left out (any web server may use them).
_VNC = tuple(p for p in range(5900, 6000) if p != 5938)
#: RDP: 3389, and 3390-3399 where a second server (xrdp beside gnome-remote-desktop) moves to.
_RDP = tuple(range(3389, 3400))

BUILTIN_TOOLS: tuple[Tool, ...] = (
    # --- commercial remote access -------------------------------------------------------
    _t("TeamViewer", "remote_access", "windows, linux, macos, android, ios",
       exes="teamviewer.exe, teamviewer_service.exe, tv_w32.exe, tv_x64.exe, teamviewer_desktop.exe, "
            "teamviewerqs.exe, teamviewer, teamviewerd, teamviewer_desktop, teamviewerhost",
       paths="?:/program files/teamviewer, ?:/program files (x86)/teamviewer, /opt/teamviewer, "
             "/applications/teamviewer.app, /applications/teamviewerhost.app, "
             "/applications/teamviewer quicksupport.app",
       services="teamviewer, teamviewerd", ports=(5938,), domains="teamviewer.com, *.teamviewer.com",
       vulns=(_v("CVE-2020-13699", "15.8.3", platforms="windows"),
              _v("CVE-2024-7479", "15.58.4", platforms="windows"),
              _v("CVE-2024-7481", "15.58.4", platforms="windows"))),
    _t("AnyDesk", "remote_access", "windows, linux, macos, android, ios",
       exes="anydesk.exe, anydesk",
       paths="?:/program files (x86)/anydesk, ?:/program files/anydesk, /usr/bin/anydesk, "
             "/usr/libexec/anydesk, /usr/share/anydesk, /applications/anydesk.app",
       services="anydesk", ports=(6568, 7070), domains="anydesk.com, *.anydesk.com",
       vulns=(_v("CVE-2020-13160", "5.5.3", platforms="linux"),)),
    _t("ConnectWise ScreenConnect", "remote_access", "windows, linux, macos", slug="screenconnect",
       aliases="connectwise, connectwise-control, connectwise-screenconnect",
       exes="screenconnect.clientservice.exe, screenconnect.windowsclient.exe, "
            "screenconnect.windowsbackstageshell.exe, screenconnect.windowsfilemanager.exe, "
            "screenconnect.service.exe",
       paths="?:/program files (x86)/screenconnect client (*), ?:/program files/screenconnect client (*), "
             "?:/program files (x86)/screenconnect, ?:/program files/screenconnect, /opt/screenconnect-*",
       services="screenconnect client (*), screenconnect web server, screenconnect relay, "
                "screenconnect session manager, screenconnect-*",
       ports=(8040, 8041), domains="screenconnect.com, *.screenconnect.com",
       vulns=(_v("CVE-2024-1709", "23.9.8"), _v("CVE-2024-1708", "23.9.8"))),
    _t("Splashtop", "remote_access", "windows, macos, android, ios",
       aliases="splashtop-remote, splashtop-beta",
       exes="srservice.exe, srmanager.exe, srserver.exe, srapp.exe, srfeature.exe, sragent.exe, "
            "strwinclt.exe, splashtopsos.exe",
       paths="?:/program files (x86)/splashtop, ?:/program files/splashtop, "
             "/applications/splashtop streamer.app, /applications/splashtop business.app",
       services="splashtopremoteservice", ports=(6783,),
       domains="splashtop.com, *.splashtop.com, *.splashtop.eu"),
    _t("RustDesk", "remote_access", "windows, linux, macos, android",
       exes="rustdesk.exe, rustdesk, hbbs, hbbr, hbbs.exe, hbbr.exe",
       paths="?:/program files/rustdesk, /usr/bin/rustdesk, /usr/lib/rustdesk, /usr/share/rustdesk, "
             "/var/lib/flatpak/app/com.rustdesk.RustDesk, /usr/bin/hbbs, /usr/bin/hbbr, /opt/rustdesk, "
             "/applications/rustdesk.app",
       services="rustdesk, rustdesksignal, rustdeskrelay", ports=tuple(range(21115, 21120)),
       domains="rustdesk.com, *.rustdesk.com"),
    _t("HopToDesk", "remote_access", "windows, linux, macos, android",
       exes="hoptodesk.exe, hoptodesk",
       paths="?:/program files (x86)/hoptodesk, ?:/program files/hoptodesk, /usr/bin/hoptodesk, "
             "/usr/share/hoptodesk, /applications/hoptodesk.app",
       services="hoptodesk", domains="hoptodesk.com, *.hoptodesk.com"),
    _t("LogMeIn", "remote_access", "windows, macos",
       exes="logmein.exe, lmiguardiansvc.exe, logmeinsystray.exe, lmiignition.exe, ramaint.exe",
       paths="?:/program files (x86)/logmein, ?:/program files/logmein, "
             "/library/application support/logmein",
       services="logmein, lmiguardiansvc, lmimaint",
       domains="logmein.com, *.logmein.com, *.logme.in, *.logmein-gateway.com"),
    _t("LogMeIn Rescue", "remote_access", "windows, macos",
       exes="lmi_rescue.exe, lmi_rescue_srv.exe, callingcard.exe, support-logmeinrescue.exe",
       domains="logmeinrescue.com, *.logmeinrescue.com"),
    _t("GoTo Resolve", "remote_access", "windows, macos", aliases="gotoassist, gotoassist-goto-resolve",
       exes="gotoresolveservice.exe, gotoassistservice.exe",
       paths="?:/program files (x86)/goto resolve unattended, ?:/program files/goto resolve unattended",
       domains="goto.com, *.goto.com, *.getgo.com, gotoassist.com, *.gotoassist.com"),
    _t("GoToMyPC", "remote_access", "windows, macos",
       exes="g2svc.exe, g2comm.exe, g2tray.exe, g2pre.exe, g2viewer.exe",
       paths="?:/program files (x86)/citrix/gotomypc, ?:/program files (x86)/gotomypc",
       services="gotomypc", domains="gotomypc.com, *.gotomypc.com, *.expertcity.com"),
    _t("Chrome Remote Desktop", "remote_access", "windows, linux, macos",
       exes="remoting_host.exe, remoting_desktop.exe, remote_assistance_host.exe, remoting_start_host.exe, "
            "remoting_native_messaging_host.exe, chrome-remote-desktop-host, chrome-remote-desktop",
       paths="?:/program files (x86)/google/chrome remote desktop, "
             "?:/program files/google/chrome remote desktop, /opt/google/chrome-remote-desktop, "
             "/library/privilegedhelpertools/org.chromium.chromoting.me2me_host.app",
       services="chromoting, chrome-remote-desktop, chrome-remote-desktop@*",
       domains="remotedesktop.google.com, remotedesktop-pa.googleapis.com"),
    _t("Microsoft Quick Assist", "remote_access", "windows", slug="quick-assist",
       aliases="microsoft-quick-assist",
       exes="quickassist.exe",
       paths="?:/windows/system32/quickassist.exe, "
             "?:/program files/windowsapps/microsoftcorporationii.quickassist_*",
       domains="remoteassistance.support.services.microsoft.com, *.support.services.microsoft.com"),
    _t("BeyondTrust Remote Support", "remote_access", "windows, macos",
       aliases="bomgar, beyondtrust, beyondtrust-bomgar",
       exes="bomgar-scc.exe, bomgar-rdp.exe, bomgar-pac.exe",
       paths="?:/programdata/bomgar-scc-*, ?:/program files/bomgar, ?:/program files/beyondtrust",
       domains="bomgar.com, *.bomgarcloud.com, beyondtrust.com, *.beyondtrustcloud.com"),
    _t("Remote Utilities", "remote_access", "windows", aliases="remoteutilities",
       exes="rutserv.exe, rfusclient.exe, rutview.exe",
       paths="?:/program files (x86)/remote utilities - host, ?:/program files/remote utilities - host, "
             "?:/program files (x86)/remote utilities - viewer, ?:/program files/remote utilities - viewer, "
             "?:/program files (x86)/remote utilities, ?:/program files/remote utilities",
       services="rmanservice", ports=(5650,),
       domains="remoteutilities.com, *.remoteutilities.com, internetid.ru, *.internetid.ru"),
    _t("LiteManager", "remote_access", "windows", aliases="lite-manager",
       exes="romserver.exe, romviewer.exe, romfusclient.exe",
       paths="?:/program files (x86)/litemanager pro - server, ?:/program files/litemanager pro - server, "
             "?:/program files (x86)/litemanager free - server, ?:/program files/litemanager free - server",
       services="romservice", ports=(5650,), domains="litemanager.ru, litemanager.com"),
    _t("Ammyy Admin", "remote_access", "windows",
       exes="aa_v3.exe, ammyy_admin.exe", ports=(5931,), domains="ammyy.com, *.ammyy.com"),
    _t("Supremo", "remote_access", "windows, macos",
       exes="supremo.exe, supremoservice.exe, supremosystem.exe, supremohelper.exe",
       paths="?:/program files (x86)/supremo, ?:/program files/supremo",
       services="supremoservice", domains="supremocontrol.com, *.supremocontrol.com, *.nanosystems.it"),
    _t("NetSupport Manager", "remote_access", "windows, macos",
       exes="client32.exe, remcmdstub.exe, pcicfgui.exe",
       paths="?:/program files (x86)/netsupport, ?:/program files/netsupport",
       services="client32", ports=(5405,),
       domains="netsupportsoftware.com, *.netsupportsoftware.com, *.netsupportmanager.com"),
    _t("Radmin", "remote_access", "windows",
       exes="rserver3.exe, radmin.exe",
       paths="?:/windows/syswow64/rserver30, ?:/windows/system32/rserver30, "
             "?:/program files (x86)/radmin viewer 3, ?:/program files/radmin viewer 3",
       services="rserver3", ports=(4899,), domains="radmin.com, *.radmin.com"),
    _t("Dameware Mini Remote Control", "remote_access", "windows", slug="dameware",
       aliases="solarwinds-dameware",
       exes="dwrcs.exe, dwrcst.exe, dwrcc.exe",
       paths="?:/windows/dwrcs, ?:/program files/solarwinds/dameware mini remote control, "
             "?:/program files (x86)/solarwinds/dameware mini remote control",
       services="dwmrcs", ports=(6129,)),
    _t("Netop Remote Control", "remote_access", "windows, macos",
       aliases="netop, impero-connect, netop-remote-control-impero-connect, "
               "netop-remote-control-aka-impero-connect",
       exes="nhostsvc.exe, nhstw32.exe, ngstw32.exe",
       paths="?:/program files (x86)/netop, ?:/program files/netop",
       ports=(6502,), domains="netop.com, *.netop.com"),
    _t("AeroAdmin", "remote_access", "windows", exes="aeroadmin.exe",
       domains="aeroadmin.com, *.aeroadmin.com"),
    _t("UltraViewer", "remote_access", "windows",
       exes="ultraviewer_desktop.exe, ultraviewer_service.exe",
       paths="?:/program files (x86)/ultraviewer, ?:/program files/ultraviewer",
       services="ultraviewservice", domains="ultraviewer.net, *.ultraviewer.net"),
    _t("ToDesk", "remote_access", "windows, linux, macos, android",
       exes="todesk.exe, todesk_service.exe, todesk",
       paths="?:/program files/todesk, ?:/program files (x86)/todesk, /opt/todesk",
       services="todesk_service, todeskd", domains="todesk.com, *.todesk.com"),
    _t("Sunlogin", "remote_access", "windows, linux, macos, android",
       exes="sunloginclient.exe, sunloginclient",
       paths="?:/program files/oray/sunlogin, ?:/program files (x86)/oray/sunlogin, /usr/local/sunlogin",
       services="sunloginservice, runsunloginclient", domains="oray.com, *.oray.com, *.oray.net"),
    _t("AweSun", "remote_access", "windows, macos", aliases="aweray",
       exes="awesun.exe", domains="aweray.com, *.aweray.com, *.aweray.net"),
    _t("AnyViewer", "remote_access", "windows",
       exes="anyviewer.exe, rcclient.exe, rcservice.exe",
       paths="?:/program files (x86)/anyviewer, ?:/program files/anyviewer",
       services="rcservice", domains="anyviewer.com, *.anyviewer.com"),
    _t("Getscreen.me", "remote_access", "windows, linux, macos", slug="getscreen", aliases="getscreen-me",
       exes="getscreen.exe, getscreen", paths="?:/program files/getscreen.me",
       domains="getscreen.me, *.getscreen.me"),
    _t("Iperius Remote", "remote_access", "windows", exes="iperiusremote.exe",
       domains="iperius.net, *.iperius.net"),
    _t("ShowMyPC", "remote_access", "windows", exes="showmypc.exe", domains="showmypc.com, *.showmypc.com"),
    _t("Mikogo", "remote_access", "windows, macos",
       exes="mikogo.exe, mikogo-service.exe, mikogo-screen-service.exe", domains="mikogo.com, *.mikogo.com"),
    _t("Jump Desktop", "remote_access", "windows, macos",
       exes="jumpconnect.exe, jumpdesktop.exe", paths="/applications/jump desktop connect.app",
       domains="jumpdesktop.com, *.jumpdesktop.com"),
    _t("RemotePC", "remote_access", "windows, macos",
       exes="remotepcservice.exe", paths="?:/program files (x86)/remotepc, ?:/program files/remotepc",
       services="remotepcservice", domains="remotepc.com, *.remotepc.com"),
    _t("Zoho Assist", "remote_access", "windows, macos",
       exes="za_access.exe, zaservice.exe, zohours.exe",
       domains="zohoassist.com, *.zohoassist.com, assist.zoho.com, *.assist.zoho.com, assist.zoho.eu, "
               "*.assist.zoho.eu, assist.zoho.in, assist.zoho.com.au"),
    _t("ISL Online", "remote_access", "windows, macos", aliases="isl-light",
       exes="isllight.exe, isllightservice.exe, isllightclient.exe",
       paths="?:/program files (x86)/isl online, ?:/program files/isl online",
       ports=(7615,), domains="islonline.com, *.islonline.com, *.islonline.net"),
    _t("Parsec", "remote_access", "windows, linux, macos",
       exes="parsecd.exe, pservice.exe, parsecd",
       paths="?:/program files/parsec, ?:/users/*/appdata/roaming/parsec, /usr/bin/parsecd, "
             "/applications/parsec.app",
       services="parsec", domains="parsec.app, *.parsec.app, parsecgaming.com, *.parsecgaming.com"),
    _t("NoMachine", "remote_access", "windows, linux, macos",
       exes="nxserver, nxnode, nxd, nxplayer, nxserver.exe, nxnode.exe, nxd.exe, nxplayer.exe, "
            "nxservice64.exe",
       paths="?:/program files/nomachine, ?:/program files (x86)/nomachine, /usr/NX, "
             "/applications/nomachine.app",
       services="nxservice, nxserver", ports=(4000,), domains="nomachine.com, *.nomachine.com"),
    _t("Devolutions Remote Desktop Manager", "remote_access", "windows, macos", slug="remote-desktop-manager",
       aliases="devolutions-remote-desktop-manager, remote-desktop-manager-devolutions",
       exes="remotedesktopmanager.exe, remotedesktopmanager64.exe",
       paths="?:/program files/devolutions/remote desktop manager, "
             "?:/program files (x86)/devolutions/remote desktop manager",
       domains="devolutions.net, *.devolutions.net"),
    _t("Apple Remote Desktop", "remote_access", "macos",
       exes="ardagent, screensharingd", paths="/system/library/coreservices/remotemanagement",
       ports=(3283, *_VNC)),
    # --- VNC and RDP servers -------------------------------------------------------------
    _t("RealVNC", "remote_access", "windows, linux, macos", aliases="vnc-connect",
       exes="vncserver.exe, vncserverui.exe, vncviewer.exe, vncagent.exe, vncserver-x11, "
            "vncserver-x11-serviced, vncserver-virtuald, vncserverui, vncagent, vncviewer",
       paths="?:/program files/realvnc, ?:/program files (x86)/realvnc, /usr/bin/vncserver-x11, "
             "/usr/bin/vncserver-x11-serviced, /usr/bin/vncserver-virtuald, /usr/bin/vncagent, "
             "/usr/bin/vncviewer, /applications/vnc server.app, /applications/vnc viewer.app, /library/vnc",
       services="vncserver, vncserver-x11-serviced, vncserver-virtuald", ports=_VNC,
       domains="realvnc.com, *.realvnc.com, *.vnc.com"),
    _t("TightVNC", "remote_access", "windows, linux",
       exes="tvnserver.exe, tvnviewer.exe, xtightvnc, tightvncserver, tightvncpasswd",
       paths="?:/program files/tightvnc, ?:/program files (x86)/tightvnc, /usr/bin/Xtightvnc, "
             "/usr/bin/tightvncserver, /usr/bin/tightvncpasswd",
       services="tvnserver", ports=(5800, *_VNC), domains="tightvnc.com, *.tightvnc.com"),
    _t("TigerVNC", "remote_access", "windows, linux, macos",
       exes="winvnc4.exe, vncviewer.exe, xvnc, xtigervnc, x0vncserver, x0tigervncserver, vncsession, "
            "tigervncsession, tigervncserver, vncviewer, xtigervncviewer",
       paths="?:/program files/tigervnc, ?:/program files (x86)/tigervnc, /usr/bin/Xvnc, /usr/bin/Xtigervnc, "
             "/usr/bin/x0vncserver, /usr/bin/x0tigervncserver, /usr/sbin/vncsession, "
             "/usr/sbin/tigervncsession, "
             "/usr/libexec/vncsession-start, /usr/libexec/tigervncsession-start, /usr/bin/vncviewer, "
             "/usr/bin/vncserver, /usr/bin/tigervncserver, /usr/bin/xtigervncviewer, "
             "/applications/tigervnc viewer*.app",
       services="vncserver@*, tigervncserver@*", ports=_VNC, domains="tigervnc.org",
       vulns=tuple(_v(f"CVE-2019-{n}", "1.10.1") for n in range(15691, 15696))),
    _t("x11vnc", "remote_access", "linux", exes="x11vnc", paths="/usr/bin/x11vnc", services="x11vnc",
       ports=_VNC),
    _t("UltraVNC", "remote_access", "windows", aliases="ultra-vnc",
       exes="winvnc.exe, vncviewer.exe, uvnc_launch.exe",
       paths="?:/program files/uvnc bvba/ultravnc, ?:/program files (x86)/uvnc bvba/ultravnc, "
             "?:/program files/ultravnc, ?:/program files (x86)/ultravnc",
       services="uvnc_service", ports=(5800, *_VNC), domains="uvnc.com"),
    _t("Vino", "remote_access", "linux", exes="vino-server",
       paths="/usr/lib/vino, /usr/libexec/vino-server", services="vino-server", ports=_VNC),
    _t("GNOME Remote Desktop", "remote_access", "linux",
       exes="gnome-remote-desktop-daemon, grdctl",
       paths="/usr/libexec/gnome-remote-desktop-daemon, /usr/bin/grdctl",
       services="gnome-remote-desktop, gnome-remote-desktop-headless", ports=(*_RDP, *_VNC)),
    _t("KRfb", "remote_access", "linux", exes="krfb, krfb-virtualmonitor",
       paths="/usr/bin/krfb, /usr/bin/krfb-virtualmonitor", ports=_VNC),
    _t("WayVNC", "remote_access", "linux", exes="wayvnc", paths="/usr/bin/wayvnc", services="wayvnc",
       ports=_VNC),
    _t("xrdp", "remote_access", "linux",
       exes="xrdp, xrdp-sesman, xrdp-chansrv",
       paths="/usr/sbin/xrdp, /usr/sbin/xrdp-sesman, /usr/sbin/xrdp-chansrv, /usr/local/sbin/xrdp, "
             "/usr/local/sbin/xrdp-sesman",
       services="xrdp, xrdp-sesman", ports=(3350, *_RDP),
       vulns=(_v("CVE-2020-4044", "0.9.13.1", platforms="linux"),
              _v("CVE-2022-23613", "0.9.18.1", platforms="linux"))),
    _t("X2Go", "remote_access", "linux, windows, macos",
       exes="x2goclient, x2goagent, x2goclient.exe",
       paths="/usr/bin/x2goclient, /usr/bin/x2goagent, /usr/lib/x2go, ?:/program files (x86)/x2goclient",
       services="x2goserver"),
    _t("Xpra", "remote_access", "linux, windows, macos",
       exes="xpra, xpra.exe, xpra_cmd.exe, xpra-launcher.exe",
       paths="/usr/bin/xpra, ?:/program files/xpra, ?:/program files (x86)/xpra, /applications/xpra.app",
       services="xpra", ports=(14500,)),
    _t("Apache Guacamole", "remote_access", "linux", slug="guacamole",
       exes="guacd", paths="/usr/sbin/guacd, /usr/local/sbin/guacd", services="guacd", ports=(4822,)),
    # --- RMM platforms ---------------------------------------------------------------------
    _t("ConnectWise Automate", "rmm", "windows",
       aliases="labtech, connectwise-automate-labtech, labtech-rmm-now-connectwise-automate, "
               "labteach-connectwise-automate",
       exes="ltsvc.exe, ltsvcmon.exe, lttray.exe", paths="?:/windows/ltsvc",
       services="ltservice, ltsvcmon", domains="*.hostedrmm.com"),
    _t("Atera", "rmm", "windows, macos",
       exes="ateraagent.exe, agentpackage*.exe",
       paths="?:/program files/atera networks, ?:/program files (x86)/atera networks",
       services="ateraagent", domains="atera.com, *.atera.com, atera.pubnubapi.com",
       vulns=(_v("CVE-2023-26077", "1.8.3.7", platforms="windows"),
              _v("CVE-2023-26078", "1.8.4.9", platforms="windows"))),
    _t("NinjaOne", "rmm", "windows, linux, macos", aliases="ninjarmm, ninjaone-formerly-ninjarmm",
       exes="ninjarmmagent.exe, ninjarmmagentpatcher.exe, ncstreamer.exe, ninjarmm-linagent, "
            "ninjarmm-macagent",
       paths="/opt/NinjaRMMAgent, /applications/ninjarmmagent",
       services="ninjarmmagent, ninjarmm-agent",
       domains="ninjarmm.com, *.ninjarmm.com, ninjaone.com, *.ninjaone.com, *.ninjarmm.net, "
               "*.rmmservice.com, *.rmmservice.eu"),
    _t("Kaseya VSA", "rmm", "windows, linux, macos", aliases="kaseya",
       exes="agentmon.exe, kausrtsk.exe, kaupdhlp.exe, kaseyaremotecontrolhost.exe",
       paths="?:/program files (x86)/kaseya, ?:/program files/kaseya, /opt/Kaseya, /library/kaseya",
       services="kaseya agent*", ports=(5721,), domains="kaseya.com, *.kaseya.com, *.kaseya.net",
       vulns=(_v("CVE-2021-30116", "9.5.7.2994"), _v("CVE-2021-30120", "9.5.7.2994"))),
    _t("N-able N-sight RMM", "rmm", "windows", slug="n-able-n-sight",
       aliases="n-able-advanced-monitoring-agent, solarwinds-rmm",
       exes="winagent.exe",
       paths="?:/program files (x86)/advanced monitoring agent, "
             "?:/program files (x86)/advanced monitoring agent gp, "
             "?:/program files/advanced monitoring agent",
       services="advanced monitoring agent",
       domains="*.systemmonitor.us, *.systemmonitor.co.uk, *.systemmonitor.eu.com, system-monitor.com, "
               "*.system-monitor.com"),
    _t("N-able Take Control", "remote_access", "windows, macos",
       aliases="beanywhere, n-able-remote-access-software",
       exes="basupsrvc.exe, basupsrvcupdater.exe, basuptshelper.exe",
       paths="?:/program files (x86)/beanywhere support express, ?:/program files/beanywhere support express",
       services="basupportexpressstandaloneservice*, basupportexpresssrvcupdater*",
       domains="*.swi-tc.com, *.beanywhere.com"),
    _t("MeshCentral", "rmm", "windows, linux, macos", aliases="meshagent",
       exes="meshagent.exe, meshagent, meshcmd.exe",
       paths="?:/program files/mesh agent, ?:/program files (x86)/mesh agent, /usr/local/mesh_services, "
             "/usr/local/mesh",
       services="mesh agent, meshagent", ports=(4433,), domains="meshcentral.com, *.meshcentral.com",
       vulns=(_v("CVE-2024-26135", "1.1.21"),)),
    _t("Tactical RMM", "rmm", "windows, linux, macos",
       exes="tacticalrmm.exe, rmmagent, tacticalagent",
       paths="?:/program files/tacticalagent, /usr/local/bin/rmmagent, /opt/tacticalagent",
       services="tacticalrmm, tacticalagent"),
    _t("DWService", "rmm", "windows, linux, macos", aliases="dw-service",
       exes="dwagent.exe, dwagsvc.exe, dwaglnc.exe, dwagent",
       paths="?:/program files/dwagent, /usr/share/dwagent, /applications/dwagent.app",
       services="dwagent", domains="dwservice.net, *.dwservice.net"),
    _t("ManageEngine Endpoint Central", "rmm", "windows, linux, macos",
       aliases="manageengine, manageengine-desktop-central, manage-engine-desktop-central",
       exes="dcagentservice.exe",
       paths="?:/program files (x86)/desktopcentral_agent, ?:/program files/desktopcentral_agent, "
             "/usr/local/manageengine/uems_agent, /library/desktopcentral_agent",
       services="manageengine desktop central - agent, manageengine uems - agent",
       ports=(8020, 8027, 8383), domains="manageengine.com, *.manageengine.com, *.manageengine.eu"),
    _t("Action1", "rmm", "windows",
       exes="action1_agent.exe, action1_connector.exe, action1_remote.exe, action1_update.exe",
       paths="?:/windows/action1", services="a1agent", domains="action1.com, *.action1.com"),
    _t("Syncro", "rmm", "windows, macos", aliases="kabuto",
       exes="syncro.service.exe, syncro.app.runner.exe, syncro.overmind.service.exe",
       paths="?:/program files/repairtech/syncro, ?:/programdata/syncro", services="syncro",
       domains="syncromsp.com, *.syncromsp.com, *.syncroapi.com, kabuto.io, *.kabuto.io, servably.com, "
               "*.servably.com"),
    _t("Level", "rmm", "windows, linux, macos", aliases="level-io",
       exes="level.exe, level-windows-amd64.exe, level",
       paths="?:/program files/level, /usr/local/bin/level", services="level",
       domains="level.io, *.level.io"),
    _t("Pulseway", "rmm", "windows, macos",
       exes="pcmonitorsrv.exe, pcmonitormanager.exe",
       paths="?:/program files/pulseway, ?:/program files (x86)/pulseway",
       services="pc monitor", domains="pulseway.com, *.pulseway.com"),
    _t("Datto RMM", "rmm", "windows, macos", aliases="centrastage, centrastage-now-datto",
       exes="aemagent.exe, cagservice.exe",
       paths="?:/program files (x86)/centrastage, ?:/program files/centrastage, ?:/programdata/centrastage",
       services="cagservice", domains="centrastage.net, *.centrastage.net, *.rmm.datto.com"),
    _t("SimpleHelp", "remote_access", "windows, linux, macos",
       exes="remote access.exe, simpleservice.exe, session_win.exe, elev_win.exe",
       paths="?:/programdata/jwrapper-remote access, ?:/program files/jwrapper-remote access, "
             "?:/program files (x86)/jwrapper-remote access, /opt/JWrapper-Remote Access, /opt/SimpleHelp, "
             "/library/application support/jwrapper-remote access",
       domains="simple-help.com, *.simple-help.com",
       vulns=(_v("CVE-2024-57726", "5.5.8"), _v("CVE-2024-57727", "5.5.8"), _v("CVE-2024-57728", "5.5.8"))),
    _t("FleetDeck", "rmm", "windows", aliases="fleetdeck-io",
       exes="fleetdeck_agent_svc.exe, fleetdeck_agent.exe",
       paths="?:/program files (x86)/fleetdeck agent, ?:/program files/fleetdeck agent",
       domains="fleetdeck.io, *.fleetdeck.io"),
    _t("Salt", "rmm", "linux, windows, macos", aliases="saltstack",
       exes="salt-minion, salt-master, salt-call",
       paths="/usr/bin/salt-minion, /usr/bin/salt-master, /usr/bin/salt-call, /opt/saltstack/salt, ?:/salt, "
             "?:/program files/salt project/salt",
       services="salt-minion, salt-master", ports=(4505, 4506),
       vulns=(_v("CVE-2020-11651", "2019.2.4"), _v("CVE-2020-11651", "3000.2", introduced="3000"),
              _v("CVE-2020-11652", "2019.2.4"), _v("CVE-2020-11652", "3000.2", introduced="3000"))),
    # --- tunnels and overlay networks ------------------------------------------------------
    _t("ngrok", "tunnel", "windows, linux, macos",
       exes="ngrok.exe, ngrok", paths="/usr/local/bin/ngrok, /usr/bin/ngrok, /snap/ngrok",
       services="ngrok", ports=(4040,),
       domains="ngrok.com, *.ngrok.com, ngrok.io, *.ngrok.io, *.ngrok.app, *.ngrok-free.app, *.ngrok.dev, "
               "*.ngrok-free.dev, *.ngrok-agent.com"),
    _t("Cloudflare Tunnel", "tunnel", "windows, linux, macos", slug="cloudflared",
       aliases="cloudflare-tunnel",
       exes="cloudflared, cloudflared.exe",
       paths="/usr/bin/cloudflared, /usr/local/bin/cloudflared, ?:/program files (x86)/cloudflared, "
             "?:/program files/cloudflared",
       services="cloudflared", ports=(7844,),
       domains="argotunnel.com, *.argotunnel.com, *.cftunnel.com, trycloudflare.com, *.trycloudflare.com"),
    _t("LocalXpose", "tunnel", "windows, linux, macos",
       exes="loclx, loclx.exe", paths="/usr/local/bin/loclx",
       domains="localxpose.io, *.localxpose.io, *.loclx.io"),
    _t("frp", "tunnel", "windows, linux, macos",
       exes="frpc, frps, frpc.exe, frps.exe",
       paths="/usr/local/bin/frpc, /usr/local/bin/frps, /usr/bin/frpc, /usr/bin/frps",
       services="frpc, frps, frpc@*, frps@*", ports=(7000, 7500)),
    _t("Remote.It", "tunnel", "windows, linux, macos", slug="remote-it", aliases="remoteit",
       exes="remoteit, remoteit.exe", paths="/usr/bin/remoteit",
       domains="remote.it, *.remote.it, *.remot3.it"),
    _t("PiTunnel", "tunnel", "linux",
       exes="pitunnel", paths="/opt/pitunnel, /usr/local/bin/pitunnel", services="pitunnel",
       domains="pitunnel.com, *.pitunnel.com"),
    _t("Dataplicity", "tunnel", "linux",
       exes="dataplicity", paths="/opt/dataplicity, /usr/local/bin/dataplicity", services="dataplicity",
       domains="dataplicity.com, *.dataplicity.com, *.dataplicity.io"),
    _t("Tailscale", "mesh_vpn", "windows, linux, macos, android, ios",
       exes="tailscaled, tailscale, tailscaled.exe, tailscale.exe, tailscale-ipn.exe",
       paths="?:/program files/tailscale, /usr/sbin/tailscaled, /usr/bin/tailscale, "
             "/applications/tailscale.app",
       services="tailscale, tailscaled", ports=(41641,),
       domains="tailscale.com, *.tailscale.com, *.tailscale.io, *.ts.net"),
    _t("ZeroTier", "mesh_vpn", "windows, linux, macos, android, ios",
       exes="zerotier-one, zerotier-cli, zerotier-one_x64.exe, zerotier-one_x86.exe, zerotier_desktop_ui.exe",
       paths="?:/programdata/zerotier, ?:/program files (x86)/zerotier, ?:/program files/zerotier, "
             "/usr/sbin/zerotier-one, /usr/sbin/zerotier-cli, /var/lib/zerotier-one, "
             "/library/application support/zerotier",
       services="zerotieroneservice, zerotier-one", ports=(9993,), domains="zerotier.com, *.zerotier.com"),
    _t("NetBird", "mesh_vpn", "windows, linux, macos",
       exes="netbird, netbird.exe, netbird-ui, netbird-ui.exe",
       paths="?:/program files/netbird, /usr/bin/netbird, /usr/local/bin/netbird, /usr/bin/netbird-ui, "
             "/applications/netbird ui.app",
       services="netbird", ports=(33073,), domains="netbird.io, *.netbird.io"),
    _t("LogMeIn Hamachi", "mesh_vpn", "windows, linux, macos", slug="hamachi", aliases="logmein-hamachi",
       exes="hamachi-2.exe, hamachi-2-ui.exe, hamachid",
       paths="?:/program files (x86)/logmein hamachi, ?:/program files/logmein hamachi, /opt/logmein-hamachi",
       services="hamachi2svc, logmein-hamachi", ports=(12975, 32976)),
    # --- terminal sharing and access gateways ----------------------------------------------
    _t("tmate", "remote_access", "linux, macos",
       exes="tmate", paths="/usr/bin/tmate, /usr/local/bin/tmate", domains="tmate.io, *.tmate.io"),
    _t("sshx", "remote_access", "linux, macos, windows",
       exes="sshx, sshx.exe", paths="/usr/local/bin/sshx", domains="sshx.io, *.sshx.io"),
    _t("Teleport", "remote_access", "linux, macos, windows", aliases="teleport-connect",
       exes="teleport, tsh, tbot, tctl, tsh.exe, teleport connect.exe",
       paths="/usr/local/bin/teleport, /usr/local/bin/tsh, /usr/local/bin/tbot, /usr/local/bin/tctl, "
             "/opt/teleport, /opt/Teleport Connect, ?:/program files/teleport connect, "
             "/applications/teleport connect.app",
       services="teleport", ports=(3022, 3023, 3024, 3025, 3080),
       domains="*.teleport.sh, goteleport.com, *.goteleport.com"),
    _t("ShellHub", "remote_access", "linux",
       exes="shellhub-agent", paths="/usr/local/bin/shellhub-agent", services="shellhub-agent",
       domains="shellhub.io, *.shellhub.io"),
)


@functools.cache
def builtin_catalog() -> Catalog:
    """The built-in catalog (built once; a Catalog is immutable)."""
    return Catalog(BUILTIN_TOOLS)
