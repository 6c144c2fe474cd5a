// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;


/// @notice The subset of ERC-20 the settlement contract calls.
interface IERC20 {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title AgoraState
/// @notice What AgoraSettlement and AgoraDisputes share: the rules fixed at deployment, the
/// storage layout (AgoraDisputes runs by delegatecall on AgoraSettlement's storage, so both
/// must see the same slots), the events, the errors and the internal rules both apply.
/// @dev Nothing here may be reordered without redeploying both contracts together.
abstract contract AgoraState {
    /// @notice Rule parameters fixed at deployment (the ledger's genesis `Params`).
    struct Params {
        /// Blocks per epoch.
        uint64 epochBlocks;
        /// Epochs between unstaking and the stake becoming withdrawable.
        uint64 unbondingEpochs;
        /// Epochs a selected leaf stays open for its commitment, and then for its reveal.
        uint64 auditWindowEpochs;
        /// Epochs in which a verdict on a revealed failure may land (at least 1).
        uint64 escalationEpochs;
        /// Epochs a provider has to answer a material demand (1 ..= escalationEpochs + 1).
        uint64 answerEpochs;
        /// Epochs a provider keeps to claim after the payer asks to close a channel.
        uint64 claimWindowEpochs;
        /// Bonded stake a provider must hold to post receipt roots.
        uint128 minProviderStake;
        /// Bonded stake a verifier must hold.
        uint128 minVerifierStake;
        /// Share of every claim that goes to the audit pool, in basis points.
        uint16 auditFeeBps;
        /// Share of a provider's bonded and unbonding stake slashed per confirmed fraud (bps).
        uint16 slashBps;
        /// Share of the slashed amount paid to the verifier that found the fraud (bps).
        uint16 bountyBps;
        /// Share of a verifier's stake burned when it passed a planted fraud (bps).
        uint16 lazySlashBps;
        /// Share of a verifier's stake burned for a revealed failure nothing confirmed (bps).
        uint16 falseAlarmBps;
        /// Audit probability after probation, parts per million.
        uint32 auditFloorPpm;
        /// A provider's first this many clean audits are all audited (and again after a fraud).
        uint64 probationJobs;
        /// Paid from the audit pool to the assigned verifier per revealed audit.
        uint128 auditFee;
        /// What a plant escrows.
        uint128 plantBond;
        /// What a payer escrows with an inclusion challenge: the provider's if it answers.
        uint128 challengeBond;
    }

    struct Account {
        uint128 stake;
        uint128 unbonding;
        uint64 releaseEpoch;
        bool verifier;
        /// Its leaves that passed a revealed audit.
        uint64 cleanAudits;
        /// Confirmed frauds against it.
        uint64 frauds;
        /// Its revealed failures not yet confirmed or expired, and the open inclusion challenges
        /// against it: withdrawal waits for them.
        uint32 openAlarms;
    }

    struct Channel {
        address payer;
        uint64 expiresEpoch;
        address provider;
        /// 0 while open; the epoch from which the channel may be finalized once the payer asked.
        uint64 closesEpoch;
        bool closed;
        uint128 deposit;
        uint128 claimed;
        /// Refunded to the payer by fraud verdicts; never above `claimed`.
        uint128 refunded;
    }

    struct Root {
        /// keccak Merkle root over receipt leaves (see receiptLeaf).
        bytes32 root;
        uint64 receipts;
        bool full;
        /// The audit probability of each leaf, fixed when posted.
        uint32 auditPpm;
        /// A plant was opened under it (one per root).
        bool plantOpened;
    }

    /// The audit of one leaf: its commitment, then its outcome.
    struct Leaf {
        bytes32 commitment;
        /// The assigned verifier that committed (zero: no commitment).
        address verifier;
        uint64 committedEpoch;
        /// NONE, PASSED or FAILED.
        uint8 outcome;
        /// Judged by a verdict or an opened plant: never again.
        bool judged;
        /// A revealed failure awaiting a verdict or a plant.
        bool alarm;
    }

    /// A commitment to a planted fake fraud (it hides the canary provider).
    struct Plant {
        address planter;
        uint64 epoch;
        uint128 bond;
    }

    /// A fraud verdict: leaf `index` of `provider`'s root of `epoch` is the receipt leaf
    /// (receipt, channel, cost) and failed its audit.
    struct Fraud {
        address provider;
        uint64 epoch;
        uint64 index;
        /// BLAKE3 hash of the provider-signed receipt (opaque to the chain).
        bytes32 receipt;
        /// The channel the receipt names.
        bytes32 channel;
        /// The receipt's cost in base units.
        uint128 cost;
        /// Sibling path from the leaf to the root, bottom up.
        bytes32[] proof;
    }

    /// The assigned verifier's on-chain demand for a leaf's material: the provider's fair
    /// chance to answer before a Withheld verdict.
    struct Demand {
        address verifier;
        /// The last epoch the provider may answer in.
        uint64 dueEpoch;
        bool answered;
        /// What the provider committed to hand the verifier (BLAKE3 of the material).
        bytes32 material;
    }

    /// A payer's challenge that a provider-signed receipt is missing from the provider's roots.
    struct Challenge {
        address payer;
        uint64 receiptEpoch;
        uint64 dueEpoch;
        address provider;
        bool open;
        /// The receipt's channel and cost, as the provider signed them.
        bytes32 channel;
        uint128 cost;
        uint128 bond;
    }

    /// The most leaves a root may claim (the ledger's MAX_PLANNED_LEAVES).
    uint64 public constant MAX_RECEIPTS = 1 << 20;
    uint256 internal constant SECP256K1_HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @notice The payer signs `Voucher(channel, cumulative)`: the provider may have claimed
    /// `cumulative` in total from `channel` after it.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channel,uint256 cumulative)");
    /// @notice A second verifier signs that the leaf (receipt, channel, cost) failed its audit.
    bytes32 public constant VERDICT_TYPEHASH = keccak256(
        "Verdict(address provider,uint64 epoch,uint64 index,bytes32 receipt,bytes32 channel,uint128 cost)"
    );
    /// @notice A second verifier signs that a planted answer fails its audit.
    bytes32 public constant PLANT_CONFIRMATION_TYPEHASH =
        keccak256("PlantConfirmation(address provider,uint64 epoch,uint64 index)");
    bytes32 internal constant BEACON_TAG = keccak256("agora/evm/beacon/v1");
    bytes32 internal constant SELECT_TAG = keccak256("agora/evm/audit-select/v1");
    bytes32 internal constant ASSIGN_TAG = keccak256("agora/evm/audit-assign/v1");
    bytes32 internal constant COMMIT_TAG = keccak256("agora/evm/audit-commit/v1");
    bytes32 internal constant PLANT_TAG = keccak256("agora/evm/plant/v1");
    uint32 internal constant FULL_AUDIT_PPM = 1_000_000;
    uint8 internal constant PASSED = 1;
    uint8 internal constant FAILED = 2;
    bytes32 internal constant NAME_HASH = keccak256("Agora");
    bytes32 internal constant VERSION_HASH = keccak256("1");

    IERC20 public immutable token;
    uint256 public immutable startBlock;
    uint64 public immutable epochBlocks;
    uint64 public immutable unbondingEpochs;
    uint64 public immutable auditWindowEpochs;
    uint64 public immutable escalationEpochs;
    uint64 public immutable answerEpochs;
    uint64 public immutable claimWindowEpochs;
    uint128 public immutable minProviderStake;
    uint128 public immutable minVerifierStake;
    uint16 public immutable auditFeeBps;
    // The audit rules: read them with params().
    uint16 internal immutable slashBps;
    uint16 internal immutable bountyBps;
    uint16 internal immutable lazySlashBps;
    uint16 internal immutable falseAlarmBps;
    uint32 internal immutable auditFloorPpm;
    uint64 internal immutable probationJobs;
    uint128 internal immutable auditFee;
    uint128 internal immutable plantBond;
    uint256 internal immutable cachedChainId;
    bytes32 internal immutable cachedDomainSeparator;
    uint128 internal immutable challengeBond;
    /// The settlement contract whose storage this code runs on (AgoraSettlement itself, or,
    /// for AgoraDisputes, the contract that deployed it and delegates to it).
    address internal immutable home;

    mapping(address => Account) public accounts;
    mapping(bytes32 => Channel) public channels;
    /// Channels opened by each payer so far; the next channel's id derives from it.
    mapping(address => uint64) public channelNonce;
    mapping(address => mapping(uint64 => Root)) public roots;
    /// The ed25519 network key each account declared (see bindNetworkKey).
    mapping(address => bytes32) public networkKey;
    /// That key's ed25519 signature over the binding (64 bytes), for peers to check.
    mapping(address => bytes) public networkKeySig;
    /// Audit fees taken from claims, paid to verifiers for revealed audits.
    uint256 public auditPool;
    /// Slashed and neither paid as bounty nor refunded: held by the contract for ever.
    uint256 public burned;
    /// Bonds of open plants.
    uint256 public plantBonds;
    /// Each epoch's beacon (0: not recorded yet); roots of epoch e are selected by e + 1's.
    mapping(uint64 => bytes32) public beacons;
    /// Audits by leaf key (leafKey).
    mapping(bytes32 => Leaf) public leaves;
    /// Open plants by commitment.
    mapping(bytes32 => Plant) public plants;
    /// Versions of the verifier set: version v assigns the roots of epochs setFrom[v] .. up to
    /// the next version's. The last one is the live set when it starts next epoch.
    uint64[] internal setFrom;
    mapping(uint256 => address[]) internal setMembers;
    /// 1 + a member's position in its version (0: not a member).
    mapping(uint256 => mapping(address => uint256)) internal setPos;
    uint256 internal locked = 1;
    /// Material demands by leaf key (AgoraDisputes).
    mapping(bytes32 => Demand) internal demands;
    /// Inclusion challenges by the receipt's BLAKE3 hash (AgoraDisputes); closed ones stay, so a
    /// receipt is challenged once.
    mapping(bytes32 => Challenge) internal challenges;
    /// Receipt leaves that already earned a provider on probation a clean audit: each counts
    /// once, whatever roots hold it. Written only while `cleanAudits < probationJobs`.
    mapping(address => mapping(bytes32 => bool)) internal probationCredited;

    event Staked(address indexed account, uint256 amount, uint256 stake);
    event Unstaked(address indexed account, uint256 amount, uint64 releaseEpoch);
    event Withdrawn(address indexed account, uint256 amount);
    event VerifierRegistered(address indexed account, uint256 stake);
    event VerifierDeregistered(address indexed account);
    event NetworkKeyBound(address indexed account, bytes32 indexed networkKey, bytes bindingSig);
    event ChannelOpened(
        bytes32 indexed channel, address indexed payer, address indexed provider, uint256 amount, uint64 expiresEpoch
    );
    event ChannelToppedUp(bytes32 indexed channel, uint256 amount, uint256 deposit);
    event VoucherClaimed(
        bytes32 indexed channel, address indexed provider, uint256 amount, uint256 cumulative, uint256 auditFee
    );
    event ChannelClosing(bytes32 indexed channel, uint64 closesEpoch);
    event ChannelClosed(bytes32 indexed channel, uint256 refund);
    event ReceiptRootPosted(address indexed provider, uint64 indexed epoch, bytes32 root, uint64 receipts, bool full);
    event UnbondingHeld(address indexed account, uint64 releaseEpoch);
    event BeaconRecorded(uint64 indexed epoch, bytes32 beacon, uint256 sourceBlock);
    event AuditCommitted(address indexed verifier, address indexed provider, uint64 epoch, uint64 index);
    event AuditRevealed(
        address indexed verifier, address indexed provider, uint64 epoch, uint64 index, bool passed, uint256 fee
    );
    event AlarmConfirmed(address indexed verifier, uint256 fee);
    event FalseAlarm(address indexed verifier, address indexed provider, uint64 epoch, uint64 index, uint256 slashed);
    event Slashed(
        address indexed provider,
        uint64 epoch,
        uint64 index,
        bytes32 receipt,
        uint256 amount,
        address verifier,
        uint256 bounty,
        address payer,
        uint256 refund,
        uint256 burned
    );
    event FraudPlanted(bytes32 indexed commitment);
    event PlantRevealed(
        address indexed provider, uint64 epoch, uint64 index, address lazy, uint256 slashed, address caught
    );
    event MaterialDemanded(
        address indexed verifier, address indexed provider, uint64 epoch, uint64 index, uint64 dueEpoch
    );
    event MaterialAnswered(address indexed provider, uint64 epoch, uint64 index, bytes32 receipt, bytes32 material);
    event InclusionChallenged(
        bytes32 indexed receipt, address indexed payer, address indexed provider, uint64 receiptEpoch, uint64 dueEpoch
    );
    event InclusionProven(bytes32 indexed receipt, address indexed provider, uint64 epoch, uint64 index, uint256 bond);
    event OmissionSlashed(
        bytes32 indexed receipt,
        address indexed provider,
        address indexed payer,
        uint256 amount,
        uint256 refund,
        uint256 burned
    );

    error BadParams(string reason);
    error UnbondingTooShort(uint64 unbonding, uint256 need);
    error Reentered();
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error TokenCallFailed();
    error TokenBalanceMismatch(uint256 expected, uint256 received);
    error InsufficientStake(address account, uint256 have, uint256 need);
    error NothingToWithdraw(address account);
    error StillUnbonding(address account, uint64 releaseEpoch, uint64 epoch);
    error BadNetworkKeyBinding();
    error BadChannelParty(address provider);
    error ChannelTimeoutTooShort(uint64 timeout, uint64 claimWindow);
    error UnknownChannel(bytes32 channel);
    error NotChannelPayer(bytes32 channel, address account);
    error NotChannelProvider(bytes32 channel, address account);
    error ChannelIsClosed(bytes32 channel);
    error ChannelNotExpired(bytes32 channel, uint64 expiresEpoch, uint64 epoch);
    error ChannelNotDue(bytes32 channel, uint64 closesEpoch, uint64 epoch);
    error ForgedVoucher(bytes32 channel, address signer);
    error DoubleClaim(uint256 cumulative, uint256 claimed);
    error OverClaim(uint256 cumulative, uint256 deposit);
    error WrongEpoch(uint64 expected, uint64 got);
    error BadReceiptCount(uint64 receipts);
    error RootAlreadyPosted(address provider, uint64 epoch);
    error BeaconNotYet(uint64 epoch);
    error AuditWindow(uint64 epoch, uint256 from, uint256 to);
    error NotAssigned(address provider, uint64 epoch, uint64 index, address verifier);
    error AlreadyCommitted(address provider, uint64 epoch, uint64 index);
    error BadReveal();
    error ConflictedVerdict();
    error NotVerifier(address account);
    error BadConfirmation(address confirmer);
    error UnknownReceiptRoot(address provider, uint64 epoch);
    error BadLeafIndex(uint64 index, uint64 receipts);
    error AlreadyJudged(bytes32 leaf);
    error BadReceiptProof(bytes32 receipt);
    error UnrevealedVerdict();
    error NoAlarm(bytes32 leaf);
    error AlarmNotDue(uint64 epoch, uint256 due);
    error AlarmsOpen(address account, uint32 open);
    error PlantExists(bytes32 commitment);
    error OnePlantPerRoot(address provider, uint64 epoch);
    error NotSettlement();
    error NoDemand(bytes32 leaf);
    error DemandClosed(bytes32 leaf);
    error AnswerStillDue(uint64 epoch, uint64 dueEpoch);
    error ForgedReceipt(address signer);
    error AlreadyChallenged(bytes32 receipt);
    error NoChallenge(bytes32 receipt);
    error NotOpenToAnswer(bytes32 receipt);
    error ChallengeNotDue(uint64 epoch, uint64 dueEpoch);
    error LateReceiptRoot(address provider, uint64 receiptEpoch, uint64 epoch);

    modifier nonReentrant() {
        if (locked != 1) revert Reentered();
        locked = 2;
        _;
        locked = 1;
    }

    /// @param token_ The ERC-20 everything is paid and staked in.
    /// @param p The rules, validated as the ledger validates its genesis.
    /// @param home_ The settlement contract whose storage this code runs on.
    constructor(IERC20 token_, Params memory p, address home_) {
        if (address(token_).code.length == 0) revert BadParams("token is not a contract");
        if (p.epochBlocks == 0) revert BadParams("epochBlocks must be positive");
        if (
            p.auditFeeBps > 10_000 || p.slashBps > 10_000 || p.bountyBps > 10_000 || p.lazySlashBps > 10_000
                || p.falseAlarmBps > 10_000
        ) revert BadParams("bps above 10000");
        if (p.auditFloorPpm > FULL_AUDIT_PPM) revert BadParams("auditFloorPpm above 1000000");
        if (p.escalationEpochs == 0) revert BadParams("escalationEpochs must be positive");
        if (p.claimWindowEpochs == 0) revert BadParams("claimWindowEpochs must be positive");
        if (p.answerEpochs == 0 || uint256(p.answerEpochs) > uint256(p.escalationEpochs) + 1) {
            revert BadParams("answerEpochs outside 1..=escalationEpochs+1");
        }
        // Stake outlives every verdict that could take it (the ledger's min_unbonding_epochs):
        // selection 1, commitments w, reveal 1, plant opening 1, escalation x; and an
        // inclusion challenge filed by r + 1 + x, answered by + a, slashed one epoch later.
        uint256 verdicts = 4 + uint256(p.auditWindowEpochs) + uint256(p.escalationEpochs);
        uint256 challengeSpan = 2 + uint256(p.escalationEpochs) + uint256(p.answerEpochs);
        uint256 need = verdicts > challengeSpan ? verdicts : challengeSpan;
        if (p.unbondingEpochs < need) revert UnbondingTooShort(p.unbondingEpochs, need);

        token = token_;
        startBlock = block.number;
        epochBlocks = p.epochBlocks;
        unbondingEpochs = p.unbondingEpochs;
        auditWindowEpochs = p.auditWindowEpochs;
        escalationEpochs = p.escalationEpochs;
        answerEpochs = p.answerEpochs;
        claimWindowEpochs = p.claimWindowEpochs;
        minProviderStake = p.minProviderStake;
        minVerifierStake = p.minVerifierStake;
        auditFeeBps = p.auditFeeBps;
        slashBps = p.slashBps;
        bountyBps = p.bountyBps;
        lazySlashBps = p.lazySlashBps;
        falseAlarmBps = p.falseAlarmBps;
        auditFloorPpm = p.auditFloorPpm;
        probationJobs = p.probationJobs;
        auditFee = p.auditFee;
        plantBond = p.plantBond;
        challengeBond = p.challengeBond;
        cachedChainId = block.chainid;
        home = home_;
        cachedDomainSeparator = _buildDomainSeparator(home_);
        // Version 0 of the verifier set: empty, from epoch 0.
        setFrom.push(0);
    }

    // ----- views -----

    /// @notice The current epoch, derived from the block number.
    function currentEpoch() public view returns (uint64) {
        return uint64((block.number - startBlock) / epochBlocks);
    }

    /// @notice The EIP-712 domain separator (name "Agora", version "1", this chain, this contract).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _buildDomainSeparator(address(this));
    }

    /// @notice The key of a leaf in `leaves`.
    function leafKey(address provider, uint64 epoch, uint64 index) public pure returns (bytes32) {
        return keccak256(abi.encode(provider, epoch, index));
    }

    /// @notice A receipt's leaf under a root: the BLAKE3 hash of the provider-signed receipt
    /// with the channel and cost it names, so a verdict refunds only what the receipt says.
    function receiptLeaf(bytes32 receipt, bytes32 channel, uint128 cost) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(uint8(0), receipt, channel, uint256(cost)));
    }

    // ----- internals -----

    /// @dev The beacon of epoch `e`: keccak of the hash of epoch e's first block, which is
    /// produced after every root of epoch e - 1 is in (roots are accepted only in their own
    /// epoch) and after the verifier set for them was frozen. A block hash is readable for
    /// 256 blocks; if nobody recorded it by then, the hash of the latest block congruent to
    /// it modulo 256 is used (one party delaying alone gains a re-draw only if nobody else
    /// records for 256 blocks). `ok` is false before the block exists.
    function _drawBeacon(uint64 e) internal view returns (bytes32 b, bool ok, uint256 src) {
        src = startBlock + uint256(e) * epochBlocks;
        if (e == 0 || block.number <= src) return (0, false, src);
        if (block.number - src > 256) src += ((block.number - src - 1) / 256) * 256;
        b = keccak256(abi.encode(BEACON_TAG, e, blockhash(src)));
        ok = true;
    }

    function _beacon(uint64 e) internal returns (bytes32 b) {
        b = beacons[e];
        if (b != 0) return b;
        bool ok;
        uint256 src;
        (b, ok, src) = _drawBeacon(e);
        if (!ok) revert BeaconNotYet(e);
        beacons[e] = b;
        emit BeaconRecorded(e, b, src);
    }

    /// @dev The ledger's rule with keccak: leaf `index` is selected when the first 8 bytes of
    /// H(beacon, provider, epoch, index), as an integer, are below ppm / 10^6 of 2^64; it goes
    /// to one member of the set frozen for `epoch`, the provider excluded.
    function _assigneeUnder(bytes32 b, address provider, uint64 epoch, uint64 index) internal view returns (address) {
        Root storage r = roots[provider][epoch];
        if (index >= r.receipts) return address(0);
        uint256 draw = uint256(keccak256(abi.encode(SELECT_TAG, b, provider, epoch, index))) >> 192;
        if (draw * 1_000_000 >= uint256(r.auditPpm) << 64) return address(0);
        uint256 v = _setAt(epoch);
        address[] storage members = setMembers[v];
        uint256 n = members.length;
        uint256 self = setPos[v][provider];
        if (self != 0) n -= 1;
        if (n == 0) return address(0);
        uint256 k = uint256(keccak256(abi.encode(ASSIGN_TAG, b, provider, epoch, index))) % n;
        if (self != 0 && k >= self - 1) k += 1;
        return members[k];
    }

    /// @dev The set version that assigns roots of `epoch`.
    function _setAt(uint64 epoch) internal view returns (uint256 v) {
        v = setFrom.length - 1;
        while (setFrom[v] > epoch) v--;
    }

    /// @dev Adds or removes `who` in the live set (the version that starts next epoch, copied
    /// from the one in effect on the first change of an epoch), and flags the account. Changes
    /// made in epoch e reach assignment from the roots of e + 1 on, as on the ledger.
    function _setVerifier(address who, bool on) internal {
        Account storage acct = accounts[who];
        if (acct.verifier == on) return;
        acct.verifier = on;
        uint256 v = setFrom.length - 1;
        uint64 next = currentEpoch() + 1;
        if (setFrom[v] != next) {
            address[] storage from = setMembers[v];
            address[] storage to = setMembers[v + 1];
            for (uint256 i = 0; i < from.length; i++) {
                to.push(from[i]);
                setPos[v + 1][from[i]] = i + 1;
            }
            setFrom.push(next);
            v += 1;
        }
        address[] storage m = setMembers[v];
        if (on) {
            m.push(who);
            setPos[v][who] = m.length;
        } else {
            uint256 at = setPos[v][who] - 1;
            address last = m[m.length - 1];
            m[at] = last;
            setPos[v][last] = at + 1;
            m.pop();
            delete setPos[v][who];
            emit VerifierDeregistered(who);
        }
    }

    function _window(uint256 from, uint256 to) internal view {
        uint64 now_ = currentEpoch();
        if (now_ < from || now_ > to) revert AuditWindow(now_, from, to);
    }

    function _root(address provider, uint64 epoch) internal view returns (Root storage r) {
        r = roots[provider][epoch];
        if (r.receipts == 0) revert UnknownReceiptRoot(provider, epoch);
    }

    /// @dev agora_core::merkle's shape with keccak: leaves padded with zero to a power of two,
    /// node = keccak(0x01 || left || right); the path length is fixed by the receipt count.
    function _underRoot(Root storage r, uint64 index, bytes32 leaf, bytes32[] calldata proof)
        internal
        view
        returns (bool)
    {
        uint256 depth;
        while ((uint256(1) << depth) < r.receipts) depth++;
        if (proof.length != depth) return false;
        bytes32 h = leaf;
        for (uint256 i = 0; i < depth; i++) {
            h = (index >> i) & 1 == 0
                ? keccak256(abi.encodePacked(uint8(1), h, proof[i]))
                : keccak256(abi.encodePacked(uint8(1), proof[i], h));
        }
        return h == r.root;
    }

    /// @dev Takes the audit fee (as much as the pool holds) out of the pool.
    function _takeFee() internal returns (uint256 fee) {
        fee = _min(auditFee, auditPool);
        auditPool -= fee;
    }

    /// @dev A failure revealed on the leaf is confirmed: its verifier's fee, to be paid.
    function _confirmAlarm(Leaf storage l) internal returns (uint256 fee) {
        if (!l.alarm) return 0;
        l.alarm = false;
        accounts[l.verifier].openAlarms -= 1;
        fee = _takeFee();
        emit AlarmConfirmed(l.verifier, fee);
    }

    /// @dev Takes `bps` of `who`'s bonded and unbonding stake, bonded first; a verifier left
    /// under the minimum stops being one. Returns the amount taken (still in the contract).
    function _slash(address who, uint16 bps) internal returns (uint256 slashed) {
        Account storage a = accounts[who];
        slashed = ((uint256(a.stake) + uint256(a.unbonding)) * bps) / 10_000;
        uint256 fromBonded = _min(slashed, a.stake);
        a.stake -= uint128(fromBonded);
        a.unbonding -= uint128(slashed - fromBonded);
        if (a.verifier && a.stake < minVerifierStake) _setVerifier(who, false);
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    function _channel(bytes32 id) internal view returns (Channel storage c) {
        c = channels[id];
        if (c.payer == address(0)) revert UnknownChannel(id);
    }

    function _amount(uint256 amount) internal pure returns (uint128) {
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        return uint128(amount);
    }

    function _buildDomainSeparator(address home_) internal view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, home_));
    }

    /// @dev ecrecover over a 65-byte (r, s, v) signature, refusing malleable (high-s) forms and
    /// returning address(0) for anything unrecoverable (which never matches a payer).
    function _recover(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (uint256(s) > SECP256K1_HALF_N || (v != 27 && v != 28)) return address(0);
        return ecrecover(digest, v, r, s);
    }

    /// @dev Pulls exactly `amount` from `from`; a token that delivers less (fee on transfer) is
    /// refused, so the contract never owes more than it holds.
    function _pull(address from, uint256 amount) internal {
        uint256 before = token.balanceOf(address(this));
        _call(abi.encodeCall(IERC20.transferFrom, (from, address(this), amount)));
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert TokenBalanceMismatch(amount, received);
    }

    function _push(address to, uint256 amount) internal {
        _call(abi.encodeCall(IERC20.transfer, (to, amount)));
    }

    /// @dev Calls the token and accepts `true` or no return data (tokens that return nothing).
    function _call(bytes memory data) internal {
        (bool ok, bytes memory ret) = address(token).call(data);
        if (!ok || (ret.length != 0 && (ret.length != 32 || abi.decode(ret, (bool)) != true))) {
            revert TokenCallFailed();
        }
    }
}
