#!/usr/bin/env bash
# Start a single-node SLURM 22.05 cluster on localhost, without systemd or cgroups (Debian 12, as root).
# Used by tests/test_slurm.py and by anyone who wants to try the submitit_slurm launcher locally.
#
#   bash scripts/slurm/start-slurm.sh      # ~6 s with packages installed; ~45 s more on a fresh machine
#   bash scripts/slurm/stop-slurm.sh       # stops every daemon this script started, by its recorded PID
#
# Environment: WITH_DBD=0 skips MariaDB + slurmdbd (then `sacct` does not work and submitit cannot see
# jobs killed before writing a result: keep the default 1 for tests); SLURM_CI_DIR (default
# /tmp/slurm-ci) holds the state, spool, logs and PID files.
# It installs the Debian packages if missing, writes /etc/slurm/slurm.conf (and slurmdbd.conf), and
# if `hostname -s` does not resolve it appends "127.0.0.1 <name>" to /etc/hosts (and says so).
# Exit codes: 0 the node is idle; 3 apt-get could not install the packages; 4 not root; else failed.
set -euo pipefail
W=${SLURM_CI_DIR:-/tmp/slurm-ci}
WITH_DBD=${WITH_DBD:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s%N); el() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }
say() { echo "[slurm-ci] $*"; }
[ "$(id -u)" = 0 ] || { say "must run as root (it installs packages and starts daemons)"; exit 4; }

# A second slurmctld kills the first and a second munged fails: stop our own first (by recorded PID).
SLURM_CI_DIR=$W bash "$HERE/stop-slurm.sh" >/dev/null 2>&1 || true

# 1. packages (~7 s for slurm+munge, ~30 s more for mariadb+slurmdbd, plus apt-get update)
PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  say "installing $PKGS"
  if ! { apt-get update -q >/dev/null && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PKGS >/dev/null; }; then
    say "apt-get could not install $PKGS"; exit 3   # exit 3: no packages (callers may skip on it)
  fi
fi
say "packages ready after $(el)"

# 2. the node name must be `hostname -s` and must resolve
NODE=$(hostname -s); NCPU=$(nproc)
if ! getent hosts "$NODE" >/dev/null; then
  echo "127.0.0.1 $NODE" >> /etc/hosts
  say "added '127.0.0.1 $NODE' to /etc/hosts (the node name did not resolve)"
fi

# 3. fresh working dirs (a stale StateSaveLocation brings old jobs and ids back)
rm -rf "$W"; mkdir -p "$W"/{state,spool,log,run}
mkdir -p /etc/slurm
if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=localci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
EnforcePartLimits=ALL
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$W/run/slurmctld.pid
SlurmdPidFile=$W/run/slurmd.pid
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/filetxt
JobCompLoc=$W/log/jobcomp.txt
$ACCT
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# 4. munged, as user munge (the package's postinst creates the key); /run is tmpfs: recreate its dir
[ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged            # daemonizes; PID in /run/munge/munged.pid
cp /run/munge/munged.pid "$W/run/munged.pid"
for _ in $(seq 100); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null
say "munged up after $(el) (pid $(cat "$W/run/munged.pid"))"

# 5. accounting: mariadb + slurmdbd (gives a working sacct)
if [ "$WITH_DBD" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >"$W/log/mariadb.log" 2>&1 &
  echo $! > "$W/run/mariadb.pid"
  for _ in $(seq 300); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb-admin ping >/dev/null
  # a fresh accounting DB every start: job ids restart at 1 with a fresh StateSaveLocation
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  say "mariadb up after $(el) (pid $(cat "$W/run/mariadb.pid"))"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$W/log/slurmdbd.log
PidFile=$W/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf      # slurmdbd refuses a conf readable by others
  /usr/sbin/slurmdbd                      # daemonizes
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
  (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null || { tail -20 "$W/log/slurmdbd.log"; exit 1; }
  say "slurmdbd up after $(el) (pid $(cat "$W/run/slurmdbd.pid"))"
fi

# 6. controller, then node daemon
/usr/sbin/slurmctld                       # daemonizes; registers cluster 'localci' with slurmdbd itself
/usr/sbin/slurmd
for _ in $(seq 300); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.1; done
[ "$(sinfo -h -o %T)" = idle ] || { sinfo; tail -20 "$W"/log/*.log; exit 1; }
say "node $NODE idle after $(el) (slurmctld $(cat "$W/run/slurmctld.pid"), slurmd $(cat "$W/run/slurmd.pid"))"
sinfo
