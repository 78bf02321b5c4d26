#!/bin/sh
# write-root.sh ROOT CURTIN_HOOK KICKSTART: writes the stand-in installer's synthetic
# openEuler-shaped root file system into ROOT (the mounted target), printing one progress line
# per stand-in "package" in anaconda's words ("Installing <name>.<arch> (N/M)").
#
# Part of the stand-in for anaconda used by the end-to-end tests (see /init): the "packages"
# are empty RPM headers in an rpm database (so rpm -qa of the image lists them) plus the few
# stand-in files below. The tree is what the image verifier (openeuler_image_builder.verify)
# and curtin look at:
# one kernel with its initramfs and modules directory, shim and GRUB EFI binaries' stand-ins under
# EFI/openEuler, a GRUB BIOS module directory, a cloud-init stand-in, an empty machine-id, no SSH
# host keys, a locked root, an empty fstab, and the curtin hook the kickstart's %post carries.
# Also run by the host-side tests (with STANDIN_* set) to check the tree without booting.
# shellcheck shell=sh
set -eu

root=$1
hook=$2
kickstart=$3

kver=$STANDIN_KERNEL_VERSION          # e.g. 6.6.0-72.0.0.76.oe2403sp1.x86_64
arch=$STANDIN_ARCH                    # x86_64
efi_arch=x64
[ "$arch" = aarch64 ] && efi_arch=aa64

# The stand-in's package set in installation order, one "name version release" per line
# (written by the ISO builder, which also put those packages' headers in an rpm database).
packages_file=${STANDIN_PACKAGES_FILE:-/etc/standin/packages}
rpmdb=${STANDIN_RPMDB:-/lib/standin/rpmdb.sqlite}
total=$(grep -c . "$packages_file")

# put PATH MODE [CONTENT]: a file with CONTENT (or empty), creating its directory.
put() {
    mkdir -p "$root$(dirname "$1")"
    printf '%s' "${3:-}" > "$root$1"
    chmod "$2" "$root$1"
}

# A stand-in binary: a shell script that says what it stands for.
stub() {
    put "$1" 0755 "#!/bin/sh
# stand-in for $2 written by the e2e stand-in installer (not a real binary)
echo '$2 (stand-in)'
"
}

install_files() {
    case $1 in
        filesystem)
            for dir in bin sbin lib lib64; do
                mkdir -p "$root/usr/$dir"
                ln -sfn "usr/$dir" "$root/$dir"
            done
            for dir in boot/efi dev etc home media mnt opt proc root run srv sys tmp var/lib \
                var/log var/cache var/tmp; do
                mkdir -p "$root/$dir"
            done
            chmod 1777 "$root/tmp" "$root/var/tmp"
            chmod 0550 "$root/root"
            ;;
        setup)
            put /etc/passwd 0644 "root:x:0:0:root:/root:/bin/bash
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
sshd:x:74:74:Privilege-separated SSH:/usr/share/empty.sshd:/sbin/nologin
"
            # root locked, no password hash (the recipe's %post locks it; rootpw --lock)
            put /etc/shadow 0000 "root:!!:19000:0:99999:7:::
bin:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
sshd:!!:19000::::::
"
            put /etc/group 0644 "root:x:0:
wheel:x:10:
adm:x:4:
systemd-journal:x:190:
"
            put /etc/fstab 0644 ""
            put /etc/hostname 0644 ""
            put /etc/resolv.conf 0644 ""
            ;;
        glibc) stub /usr/bin/ldd glibc ;;
        bash) stub /usr/bin/bash bash ;;
        openEuler-release)
            put /etc/os-release 0644 "NAME=\"openEuler\"
VERSION=\"$STANDIN_OS_VERSION\"
ID=\"openEuler\"
VERSION_ID=\"$STANDIN_VERSION_ID\"
PRETTY_NAME=\"openEuler $STANDIN_OS_VERSION\"
ANSI_COLOR=\"0;31\"

"
            put /etc/openEuler-release 0644 "openEuler release $STANDIN_VERSION_ID ($STANDIN_OS_VERSION_TAG)
"
            put /etc/yum.repos.d/openEuler.repo 0644 "[OS]
name=OS
baseurl=http://repo.openeuler.org/openEuler-$STANDIN_RELEASE/OS/\$basearch/
enabled=1
gpgcheck=1
gpgkey=http://repo.openeuler.org/openEuler-$STANDIN_RELEASE/OS/\$basearch/RPM-GPG-KEY-openEuler
"
            ;;
        systemd)
            stub /usr/lib/systemd/systemd systemd
            # machine-id kept but empty: systemd generates one at first boot
            put /etc/machine-id 0444 ""
            ;;
        rpm) stub /usr/bin/rpm rpm ;;
        dnf) stub /usr/bin/dnf-3 dnf; ln -sfn dnf-3 "$root/usr/bin/dnf" ;;
        openssh-server)
            stub /usr/sbin/sshd openssh-server
            put /etc/ssh/sshd_config 0600 "PasswordAuthentication no
"
            # no ssh_host_*_key files: every deployed machine generates its own
            ;;
        python3) stub /usr/bin/python3.11 python3; ln -sfn python3.11 "$root/usr/bin/python3" ;;
        dracut) stub /usr/bin/dracut dracut ;;
        grub2-common)
            stub /usr/sbin/grub2-install grub2-install
            stub /usr/sbin/grub2-mkconfig grub2-mkconfig
            put /etc/default/grub 0644 "GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=\"\$(sed 's, release .*\$,,g' /etc/system-release)\"
GRUB_TERMINAL_OUTPUT=\"console\"
GRUB_CMDLINE_LINUX=\"cgroup_disable=files apparmor=0\"
GRUB_DISABLE_RECOVERY=\"true\"
GRUB_ENABLE_BLSCFG=false
"
            ;;
        grub2-pc) stub /usr/sbin/grub2-bios-setup grub2-pc ;;
        grub2-pc-modules)
            put /usr/lib/grub/i386-pc/normal.mod 0644 "stand-in grub2-pc-modules"
            put /usr/lib/grub/i386-pc/boot.img 0644 "stand-in grub2-pc-modules"
            ;;
        grub2-efi-x64 | grub2-efi-aa64)
            put "/boot/efi/EFI/openEuler/grub$efi_arch.efi" 0700 "stand-in $1"
            put /boot/efi/EFI/openEuler/grub.cfg 0700 ""
            ;;
        grub2-efi-x64-modules | grub2-efi-aa64-modules)
            grub_dir=x86_64-efi
            [ "$efi_arch" = aa64 ] && grub_dir=arm64-efi
            put "/usr/lib/grub/$grub_dir/normal.mod" 0644 "stand-in $1"
            ;;
        shim-x64 | shim-aa64)
            put "/boot/efi/EFI/openEuler/shim$efi_arch.efi" 0700 "stand-in $1"
            put "/boot/efi/EFI/openEuler/mm$efi_arch.efi" 0700 "stand-in $1"
            put "/boot/efi/EFI/BOOT/BOOT$(echo "$efi_arch" | tr a-z A-Z).EFI" 0700 "stand-in $1"
            put "/boot/efi/EFI/BOOT/fb$efi_arch.efi" 0700 "stand-in $1"
            ;;
        efibootmgr) stub /usr/sbin/efibootmgr efibootmgr ;;
        kernel)
            put "/boot/vmlinuz-$kver" 0755 "stand-in kernel $kver"
            put "/boot/System.map-$kver" 0644 "stand-in kernel $kver"
            put "/boot/config-$kver" 0644 "# stand-in kernel $kver"
            put "/boot/initramfs-$kver.img" 0600 "stand-in initramfs $kver"
            put "/usr/lib/modules/$kver/modules.dep" 0644 ""
            put "/usr/lib/modules/$kver/vmlinuz" 0755 "stand-in kernel $kver"
            ;;
        cloud-init)
            put /usr/bin/cloud-init 0755 "#!/bin/sh
# stand-in for cloud-init written by the e2e stand-in installer
case \"\${1:-}\" in
    --version) echo \"/usr/bin/cloud-init $STANDIN_CLOUD_INIT_VERSION\" ;;
    features) echo NETWORK_CONFIG_V1; echo NETWORK_CONFIG_V2 ;;
    *) echo 'cloud-init (stand-in)' ;;
esac
"
            put "/usr/lib/python3.11/site-packages/cloudinit/version.py" 0644 "__VERSION__ = \"$STANDIN_CLOUD_INIT_VERSION\"
"
            put /etc/cloud/cloud.cfg 0644 "# stand-in cloud.cfg
system_info:
  distro: openeuler
  default_user:
    name: $STANDIN_DEFAULT_USER
    lock_passwd: true
    groups: [wheel, adm, systemd-journal]
    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]
"
            mkdir -p "$root/etc/cloud/cloud.cfg.d"
            ;;
        python3-oauthlib) put /usr/lib/python3.11/site-packages/oauthlib/__init__.py 0644 "" ;;
        lvm2) stub /usr/sbin/lvm lvm2 ;;
        mdadm) stub /usr/sbin/mdadm mdadm ;;
    esac
}

number=0
while read -r name version release; do
    number=$((number + 1))
    echo "Installing $name.$arch ($number/$total)"
    install_files "$name"
    [ "${STANDIN_PACKAGE_DELAY:-0}" = 0 ] || sleep "$STANDIN_PACKAGE_DELAY"
done < "$packages_file"

# The rpm database with those packages' headers (rpm -qa of the image lists them).
if [ -f "$rpmdb" ]; then
    mkdir -p "$root/var/lib/rpm"
    cp "$rpmdb" "$root/var/lib/rpm/rpmdb.sqlite"
    chmod 0644 "$root/var/lib/rpm/rpmdb.sqlite"
fi

# The package list as plain text too, for the tests' checks.
mkdir -p "$root/var/lib/standin"
awk -v arch="$arch" '{ print $1 "-" $2 "-" $3 "." arch }' "$packages_file" | sort \
    > "$root/var/lib/standin/packages"

# What the kickstart's %post does that the verifier and curtin look at: the in-image curtin hook.
mkdir -p "$root$(dirname "$STANDIN_HOOK_PATH")"
cp "$hook" "$root$STANDIN_HOOK_PATH"
chmod 0755 "$root$STANDIN_HOOK_PATH"

# anaconda stores the kickstart it ran as /root/anaconda-ks.cfg
cp "$kickstart" "$root/root/anaconda-ks.cfg"
chmod 0600 "$root/root/anaconda-ks.cfg"
