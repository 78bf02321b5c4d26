# Functions of the stand-in installer (a stand-in for anaconda, NOT anaconda).
# Sourced by the stand-in's /init inside its initramfs, and by the host-side tests
# (tests/e2e/test_standin_installer.py) with busybox sh, so the kickstart checks and the
# partitioning plan are tested without booting anything.
# shellcheck shell=sh

# Configuration (set by /etc/standin/standin.conf in the initramfs, or by the tests):
#   STANDIN_KS_MARKER       the start of the rendered kickstart's first line; the whole line
#                           must read "<marker> release=<R> arch=<A> template=<16 hex>"
#   STANDIN_RELEASE, STANDIN_ARCH  the release and arch of this ISO (the kickstart must match)
#   STANDIN_HOOK_PATH       where the kickstart's %post writes the curtin hook (/curtin/curtin-hooks)
#   STANDIN_HOOK_DELIMITER  the heredoc delimiter around the embedded hook

# cmdline_value NAME [CMDLINE]: the value of NAME=... on the kernel command line (last one wins,
# as anaconda's boot options do); prints nothing when absent.
cmdline_value() {
    _name=$1
    _cmdline=${2:-$(cat /proc/cmdline)}
    _value=
    for _arg in $_cmdline; do
        case $_arg in
            "$_name="*) _value=${_arg#"$_name="} ;;
        esac
    done
    printf '%s' "$_value"
}

# cmdline_has FLAG [CMDLINE]: whether the bare FLAG is on the kernel command line.
cmdline_has() {
    for _arg in ${2:-$(cat /proc/cmdline)}; do
        [ "$_arg" = "$1" ] && return 0
    done
    return 1
}

# ks_commands KICKSTART: the kickstart's command section (everything outside %packages, %pre,
# %post... sections), comments and blank lines removed, continuation lines joined.
ks_commands() {
    awk '
        /^[ \t]*%(packages|pre|post|pre-install|onerror|traceback|addon|anaconda)([ \t]|$)/ {
            in_section = 1; next
        }
        /^[ \t]*%end[ \t]*$/ { in_section = 0; next }
        in_section { next }
        /^[ \t]*#/ || /^[ \t]*$/ { next }
        {
            line = $0
            while (line ~ /\\$/ && (getline next_line) > 0) {
                sub(/\\$/, "", line); line = line " " next_line
            }
            sub(/^[ \t]+/, "", line); print line
        }
    ' "$1"
}

# ks_check KICKSTART: checks that this is the project's rendered kickstart; prints the first
# problem and returns 1, or returns 0.
ks_check() {
    _ks=$1
    if [ ! -s "$_ks" ]; then
        echo "the kickstart is empty"
        return 1
    fi
    _first=$(head -n 1 "$_ks")
    case $_first in
        "$STANDIN_KS_MARKER "*) ;;
        *)
            echo "the kickstart's first line is not '$STANDIN_KS_MARKER release=... arch=... template=...': it is not the kickstart openeuler-image-builder renders"
            return 1 ;;
    esac
    if ! printf '%s\n' "$_first" | grep -qxE -- "$STANDIN_KS_MARKER release=[^ ]+ arch=[^ ]+ template=[0-9a-f]{16}"; then
        echo "the kickstart's first line '$_first' does not read '$STANDIN_KS_MARKER release=<R> arch=<A> template=<16 hex digits>'"
        return 1
    fi
    if [ "$_first" = "${_first#* release=$STANDIN_RELEASE arch=$STANDIN_ARCH }" ]; then
        echo "the kickstart was rendered for another release or arch ('$_first'), this installer media is openEuler $STANDIN_RELEASE $STANDIN_ARCH"
        return 1
    fi
    _begins=$(grep -c -- "<<[ ]*['\"]\{0,1\}$STANDIN_HOOK_DELIMITER['\"]\{0,1\}[ \t]*\$" "$_ks")
    _ends=$(grep -cxF -- "$STANDIN_HOOK_DELIMITER" "$_ks")
    if [ "$_begins" -ne 1 ] || [ "$_ends" -ne 1 ]; then
        echo "the kickstart must embed the curtin hook in exactly one heredoc delimited by $STANDIN_HOOK_DELIMITER (found $_begins openings, $_ends closing lines)"
        return 1
    fi
    if ! grep -q -- "$STANDIN_HOOK_PATH" "$_ks"; then
        echo "the kickstart never writes $STANDIN_HOOK_PATH"
        return 1
    fi
    if ! awk '/^[ \t]*%post([ \t]|$)/ { p = 1 } p && /^[ \t]*%end/ { p = 0 } p' "$_ks" \
        | grep -q -- "<<[ ]*['\"]\{0,1\}$STANDIN_HOOK_DELIMITER"; then
        echo "the curtin hook heredoc is not inside a %post section"
        return 1
    fi
    _source=$(ks_install_source "$_ks")
    case $_source in
        cdrom | harddrive) ;;
        "") echo "the kickstart names no installation source (cdrom, harddrive, url, ...)"; return 1 ;;
        *) echo "installation source '$_source' is not implemented by the stand-in installer (cdrom and harddrive are)"; return 1 ;;
    esac
    if ks_commands "$_ks" | grep -qE '^(autopart|volgroup|logvol|raid)([ \t]|$)'; then
        echo "the stand-in installer only implements explicit 'part' partitioning (autopart, volgroup, logvol and raid are not implemented)"
        return 1
    fi
    if ! ks_commands "$_ks" | grep -qE '^part[ \t]+/[ \t]'; then
        echo "the kickstart has no 'part /' line: no root filesystem to install into"
        return 1
    fi
    return 0
}

# ks_install_source KICKSTART: the installation source command (cdrom, harddrive, url, nfs,
# liveimg...), empty when there is none.
ks_install_source() {
    ks_commands "$1" | awk '$1 ~ /^(cdrom|harddrive|url|nfs|liveimg|hmc|ostreesetup)$/ { print $1; exit }'
}

# ks_repos KICKSTART: one "NAME BASEURL PROXY" line per "repo" command (PROXY - when none).
ks_repos() {
    ks_commands "$1" | grep -E '^repo[ \t]' | while read -r _line; do
        _proxy=$(ks_option "$_line" proxy)
        printf '%s %s %s\n' "$(ks_option "$_line" name)" "$(ks_option "$_line" baseurl)" "${_proxy:--}"
    done
}

# ks_extract_hook KICKSTART OUTPUT: writes the curtin hook embedded in the kickstart's %post.
ks_extract_hook() {
    awk -v delim="$STANDIN_HOOK_DELIMITER" '
        copying && $0 == delim { copying = 0; done = 1; next }
        copying { print; next }
        !done && index($0, "<<") && index($0, delim) { copying = 1 }
    ' "$1" > "$2"
    [ -s "$2" ] || { echo "the curtin hook between the $STANDIN_HOOK_DELIMITER lines is empty"; return 1; }
    head -n 1 "$2" | grep -q '^#!' \
        || { echo "the embedded curtin hook does not start with a #! line"; return 1; }
}

# ks_option LINE OPTION: the value of --OPTION=V or --OPTION V in a kickstart command line;
# prints "yes" for a bare flag, nothing when absent.
ks_option() {
    printf '%s\n' "$1" | awk -v opt="--$2" '
        {
            for (i = 2; i <= NF; i++) {
                if ($i == opt) {
                    if (i < NF && $(i + 1) !~ /^--/) { print $(i + 1) } else { print "yes" }
                    exit
                }
                if (index($i, opt "=") == 1) { print substr($i, length(opt) + 2); exit }
            }
        }'
}

# ks_end_action KICKSTART: poweroff, reboot, halt or shutdown (anaconda's default is halt).
ks_end_action() {
    _action=$(ks_commands "$1" | awk '$1 ~ /^(poweroff|reboot|halt|shutdown)$/ { a = $1 } END { print a }')
    [ "$_action" = shutdown ] && _action=poweroff
    printf '%s' "${_action:-halt}"
}

# ks_target_disk KICKSTART: the disk to install on (part --ondisk, else ignoredisk --only-use,
# else clearpart --drives, else the first virtio/SCSI disk that is not the installer media).
ks_target_disk() {
    _cmds=$(ks_commands "$1")
    _disk=$(printf '%s\n' "$_cmds" | while read -r _line; do
        case $_line in
            part\ *) ks_option "$_line" ondisk ;;
        esac
    done | head -n 1)
    [ -n "$_disk" ] || _disk=$(printf '%s\n' "$_cmds" | grep '^ignoredisk ' | head -n 1 \
        | while read -r _line; do ks_option "$_line" only-use; done)
    [ -n "$_disk" ] || _disk=$(printf '%s\n' "$_cmds" | grep '^clearpart ' | head -n 1 \
        | while read -r _line; do ks_option "$_line" drives; done)
    printf '%s' "${_disk%%,*}"
}

# ks_partition_plan KICKSTART: one line per partition, in the order they are created:
#   MOUNTPOINT FSTYPE SIZE_MIB GROW LABEL
# (GROW is yes/no; LABEL is - when none). Partitions with --grow come last, as blivet
# allocates fixed sizes first.
ks_partition_plan() {
    ks_commands "$1" | grep -E '^part[ \t]' | while read -r _line; do
        _mount=$(printf '%s\n' "$_line" | awk '{ print $2 }')
        _fstype=$(ks_option "$_line" fstype)
        case $_mount in
            biosboot) _fstype=biosboot ;;
            swap) _fstype=swap ;;
        esac
        if [ -z "$_fstype" ]; then
            # anaconda's default file system on openEuler is ext4 (openeuler-releases.md 7)
            case $_mount in
                /boot/efi) _fstype=efi ;;
                *) _fstype=ext4 ;;
            esac
        fi
        _size=$(ks_option "$_line" size)
        _grow=no
        [ -n "$(ks_option "$_line" grow)" ] && _grow=yes
        [ -n "$_size" ] || _size=1
        _label=$(ks_option "$_line" label)
        printf '%s %s %s %s %s\n' "$_mount" "$_fstype" "$_size" "$_grow" "${_label:--}"
    done | awk '$4 == "no" { print } $4 == "yes" { grown = grown $0 "\n" } END { printf "%s", grown }'
}

# ks_disklabel KICKSTART UEFI: gpt or dos: clearpart --disklabel, else gpt on UEFI, dos on BIOS.
ks_disklabel() {
    _label=$(ks_commands "$1" | grep '^clearpart ' | head -n 1 \
        | while read -r _line; do ks_option "$_line" disklabel; done)
    case $_label in
        gpt) echo gpt ;;
        msdos | dos) echo dos ;;
        *) if [ "$2" = yes ]; then echo gpt; else echo dos; fi ;;
    esac
}

# sfdisk_script PLAN DISKLABEL: the sfdisk input that lays out the partition plan.
sfdisk_script() {
    echo "label: $2"
    printf '%s\n' "$1" | while read -r _mount _fstype _size _grow _label; do
        [ -n "$_mount" ] || continue
        case $2:$_fstype in
            gpt:efi | gpt:vfat) _type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B ;;
            gpt:biosboot) _type=21686148-6449-6E6F-744E-656564454649 ;;
            gpt:swap) _type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F ;;
            gpt:*) _type=0FC63DAF-8483-4772-8E79-3D69D8477DE4 ;;
            dos:efi | dos:vfat) _type=ef ;;
            dos:swap) _type=82 ;;
            dos:*) _type=83 ;;
        esac
        if [ "$_grow" = yes ]; then
            echo ",+,$_type"
        else
            echo ",${_size}MiB,$_type"
        fi
    done
}

# partition_device DISK N: the device node of partition N of DISK (vda1, nvme0n1p1).
partition_device() {
    case $1 in
        *[0-9]) printf '%sp%s' "$1" "$2" ;;
        *) printf '%s%s' "$1" "$2" ;;
    esac
}
