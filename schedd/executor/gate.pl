# schedd gate: the job's supervisor inside its scope (conmon's role, in ~2 ms of perl).
# The perl twin of gate.c, run where schedd-gate was not built (or $SCHEDD_GATE_PERL is set).
#
# Started by the daemon with posix_spawn, as root, with an empty environment:
#   fd 3  release pipe: "go\n" once the daemon has put us in the job's scope and
#         pinned our CPUs; EOF without it means "abort" (the daemon gave up or died).
#   fd 4  status file: we write the job's wait status and cgroup counters here,
#         so the result survives a daemon restart.
#   fd 5  the job's environment, NUL-separated (never on argv: /proc/PID/cmdline
#         is world-readable, and PERL5OPT in it would run code as root here).
#   argv  UID GID GROUPS CWD STDOUT STDERR ACCT -- COMMAND...  (STDOUT/STDERR absolute)
# The child drops to the user before it opens anything, so output files and the
# working directory are reached with the user's rights only. Setup failures exit
# with systemd's codes (200 CHDIR, 203 EXEC, 209 STDOUT, 216 GROUP, 217 USER).
# No modules are loaded: `use POSIX` alone would cost 10 ms a job.
my ($uid, $gid, $groups, $cwd, $out, $err, $acct) = splice(@ARGV, 0, 7);
shift @ARGV if @ARGV && $ARGV[0] eq '--';
open(my $rel, '<&=', 3) or exit 120;
my $go = <$rel>;
close($rel);
open(my $st, '>>&=', 4) or exit 122;
unless (defined $go && $go eq "go\n") { syswrite($st, "aborted=1\n"); exit 121; }  # never ran
my %env;
if (open(my $ef, '<&=', 5)) {
    local $/ = "\0";
    while (my $kv = <$ef>) {
        chop $kv if substr($kv, -1) eq "\0";
        my $i = index($kv, '=');
        $env{substr($kv, 0, $i)} = substr($kv, $i + 1) if $i > 0;
    }
    close($ef);
}
$SIG{$_} = 'IGNORE' for qw(TERM INT HUP);
my $pid = fork();
exit 123 unless defined $pid;
if ($pid == 0) {
    $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP PIPE);
    sub fail {
        my ($code, $msg) = @_;
        # User text (paths, argv[0]): one line stays one line, and as short as gate.c's (4095 bytes before escaping).
        (my $line = substr($msg, 0, 4095)) =~ s/([^\x20-\x5b\x5d-\x7e])/sprintf('\\x%02x', ord $1)/ge;
        syswrite($st, "error=$line\n");
        print STDERR "schedd: $msg\n";
        exit $code;
    }
    if ($uid ne '-') {
        $! = 0;
        $) = "$gid $groups";
        fail(216, "cannot set groups $groups: $!") if (split ' ', $))[0] != $gid;
        $( = $gid;
        fail(216, "cannot set gid $gid: $!") if $( != $gid;
        ($<, $>) = ($uid, $uid);
        fail(217, "cannot set uid $uid: $!") if $< != $uid || $> != $uid;
    }
    %ENV = %env;
    open(STDOUT, '>', $out) or fail(209, "cannot open $out for writing: $!");
    if ($err eq $out) {
        open(STDERR, '>&', \*STDOUT) or fail(209, "cannot duplicate stdout: $!");
    } else {
        open(STDERR, '>', $err) or fail(209, "cannot open $err for writing: $!");
    }
    chdir($cwd) or fail(200, "cannot change to working directory $cwd: $!");  # after the output is open
    close($st);
    { exec { $ARGV[0] } @ARGV; }
    fail(203, "cannot execute $ARGV[0]: $!");
}
my $status = waitpid($pid, 0) == $pid ? $? : 255 << 8;
my @t = times;
my $cpu = int(($t[2] + $t[3]) * 1e6);
my ($oom, $peak, $others) = (0, 0, 0);
sub slurp { my $f; open($f, '<', $_[0]) or return ''; local $/; my $s = <$f>; close $f; return $s; }
if ($acct) {
    my (%v1, $v2);
    for (split /\n/, slurp('/proc/self/cgroup')) {
        my ($n, $ctl, $p) = split /:/, $_, 3;
        next unless $p =~ /\.scope$/;  # only our own unit's cgroups, never a parent's counters
        if ($ctl eq '') { $v2 = $p; } else { $v1{$_} = $p for split /,/, $ctl; }
    }
    my $u = -e '/sys/fs/cgroup/unified/cgroup.procs' ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';
    if (exists $v1{memory}) {
        my $m = "/sys/fs/cgroup/memory$v1{memory}";
        $oom = $1 if slurp("$m/memory.oom_control") =~ /oom_kill (\d+)/;
        $peak = $1 if slurp("$m/memory.max_usage_in_bytes") =~ /(\d+)/;
    } elsif (defined $v2) {
        $oom = $1 if slurp("$u$v2/memory.events") =~ /oom_kill (\d+)/;
        $peak = $1 if slurp("$u$v2/memory.peak") =~ /(\d+)/;
    }
    if (exists $v1{cpuacct}) {
        my $d = -d '/sys/fs/cgroup/cpuacct' ? '/sys/fs/cgroup/cpuacct' : '/sys/fs/cgroup/cpu,cpuacct';
        $cpu = int($1 / 1000) if slurp("$d$v1{cpuacct}/cpuacct.usage") =~ /(\d+)/;
    } elsif (defined $v2 && slurp("$u$v2/cpu.stat") =~ /usage_usec (\d+)/) {
        $cpu = $1;
    }
    my $procs = exists $v1{'name=systemd'} ? "/sys/fs/cgroup/systemd$v1{'name=systemd'}/cgroup.procs" : "$u$v2/cgroup.procs";
    for (split /\n/, slurp($procs)) { $others++ if $_ != $$; }
}
syswrite($st, "status=$status\noom_kill=$oom\npeak=$peak\ncpu_usec=$cpu\nstragglers=$others\nend=1\n");
close($st);
exit($status & 127 ? 128 + ($status & 127) : $status >> 8);
