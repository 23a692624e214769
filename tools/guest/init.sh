#!/bin/busybox sh
# kdlayout fixture guest init (template; @VARS@ are filled in by tools/build_fixtures.py).
# One script for both kernels: with /proc/vmcore present we are the kdump
# capture kernel and copy the dump to the virtio disk; otherwise we set up the
# workload, load the capture kernel with kexec -p and wait for "crash" on the
# serial console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /sbin /usr/bin /usr/sbin /run
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
KVER=$(uname -r)
echo "KDL-STAGE init kernel=$KVER"

load_modules() {
    # /modules/<release>/order: "<name> [params...]" in dependency order
    if [ ! -f "/modules/$KVER/order" ]; then
        echo "KDL-WARN no modules for $KVER"
        return
    fi
    while read -r name params; do
        [ -z "$name" ] && continue
        if insmod "/modules/$KVER/$name.ko" $params 2>/tmp/insmod.err; then
            echo "KDL-MOD $name ok"
        else
            echo "KDL-MOD $name failed: $(cat /tmp/insmod.err)"
        fi
    done < "/modules/$KVER/order"
}

if [ -e /proc/vmcore ]; then
    echo "KDL-STAGE capture"
    load_modules
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    if [ -x /bin/vmcore_copy ]; then
        # mmap-based copy, zero blocks left as holes; prints KDL-VMCORE-SIZE/DONE/FAILED
        /bin/vmcore_copy /proc/vmcore /dev/vda
    else
        SIZE=$(stat -c %s /proc/vmcore)
        echo "KDL-VMCORE-SIZE $SIZE"
        # zero blocks become holes on the host (detect-zeroes=unmap)
        if dd if=/proc/vmcore of=/dev/vda bs=1M 2>/tmp/dd.err; then
            sync
            echo "KDL-VMCORE-DONE"
        else
            echo "KDL-VMCORE-FAILED $(tail -n 1 /tmp/dd.err)"
        fi
    fi
    sync
    poweroff -f
    sleep 10
    echo o > /proc/sysrq-trigger
fi

echo "KDL-STAGE main"
load_modules
echo 1 > /proc/sys/kernel/sysrq
echo always > /sys/kernel/mm/transparent_hugepage/enabled
echo always > /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null
echo @HUGEPAGES@ > /proc/sys/vm/nr_hugepages
echo "KDL-INFO {\"kind\":\"hugetlb_pool\",\"nr_hugepages\":$(cat /proc/sys/vm/nr_hugepages)}"
if [ -d /sys/kernel/mm/ksm ]; then
    echo 2000 > /sys/kernel/mm/ksm/pages_to_scan
    echo 20 > /sys/kernel/mm/ksm/sleep_millisecs
    echo 1 > /sys/kernel/mm/ksm/run
fi
# swap on zram
if [ -e /sys/block/zram0 ]; then
    echo @ZRAM_BYTES@ > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0 \
        && echo "KDL-STAGE swap on zram0" || echo "KDL-WARN zram swap failed"
fi
# ext4 (created as ext2, mounted by the ext4 driver) on a brd RAM disk
if [ -b /dev/ram0 ]; then
    mke2fs -q /dev/ram0 >/dev/null 2>&1 || mke2fs /dev/ram0
    mount -t ext4 /dev/ram0 /mnt && echo "KDL-STAGE ext4 on ram0" || echo "KDL-WARN mount ext4 failed"
fi
# capture kernel
if kexec -p /capture/vmlinuz --initrd=/capture/initrd.img --append="@CAPTURE_CMDLINE@" 2>/tmp/kexec.err; then
    echo "KDL-KEXEC loaded=$(cat /sys/kernel/kexec_crash_loaded)"
else
    echo "KDL-KEXEC failed: $(cat /tmp/kexec.err | tr '\n' ' ')"
fi
/bin/workload @WORKLOAD_MIB@ /mnt &
echo "KDL-STAGE workload pid $!"
while read -r cmd; do
    case "$cmd" in
        *crash*)
            echo "KDL-STAGE panicking"
            sync
            echo c > /proc/sysrq-trigger
            ;;
        *meminfo*)
            cat /proc/meminfo
            ;;
    esac
done
sleep 100000
