// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20, AgoraState} from "./AgoraState.sol";
import {AgoraDisputes} from "./AgoraDisputes.sol";

/// @title AgoraSettlement
/// @notice The embedded ledger's settlement rules (crates/ledger) on an EVM chain: stake with
/// unbonding, verifier registration, payment channels in one ERC-20 with cumulative EIP-712
/// vouchers, receipt roots per epoch, and the audits: selection and assignment from a block
/// hash fixed after the roots and a verifier set frozen before it, committed and revealed
/// outcomes with fees, fraud verdicts co-signed by a second verifier (slash, bounty, refund
/// from the receipt's own channel), false alarms, and the canary's plants. See
/// docs/settlement.md.
/// @dev Every amount is an integer in the token's base units. Epochs are derived from block
/// numbers: epoch = (block.number - startBlock) / epochBlocks. Every function that moves
/// tokens holds a reentrancy lock and changes state before it calls the token.
contract AgoraSettlement is AgoraState {
    /// @notice The dispute rules (material demands, Withheld verdicts, inclusion challenges),
    /// deployed by this constructor with the same rules and run on this storage by delegatecall
    /// from the fallback: one address and one token approval for users.
    address private immutable disputes;

    /// @param token_ The ERC-20 everything is paid and staked in.
    /// @param p The rules, validated as the ledger validates its genesis.
    constructor(IERC20 token_, Params memory p) AgoraState(token_, p, address(this)) {
        disputes = address(new AgoraDisputes(token_, p, address(this)));
    }

    /// @notice Every function this contract does not have is AgoraDisputes' (see its ABI).
    fallback() external {
        address d = disputes;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), d, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if ok { return(0, returndatasize()) }
            revert(0, returndatasize())
        }
    }

    // ----- views -----

    /// @notice The EIP-712 digest a payer signs for a voucher.
    function voucherDigest(bytes32 channel, uint256 cumulative) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOUCHER_TYPEHASH, channel, cumulative));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The id of the channel `payer` opens with its `nonce`-th openChannel.
    function channelId(address payer, uint64 nonce) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), payer, nonce));
    }

    /// @notice What a verifier commits to before it reveals an audit outcome.
    function auditCommitment(
        address verifier,
        address provider,
        uint64 epoch,
        uint64 index,
        bool passed,
        bytes32 salt
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(COMMIT_TAG, block.chainid, address(this), verifier, provider, epoch, index, passed, salt)
        );
    }

    /// @notice What a planter commits to for a planted fake fraud at a leaf.
    function plantCommitment(address provider, uint64 epoch, uint64 index, bytes32 salt)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(PLANT_TAG, block.chainid, address(this), provider, epoch, index, salt));
    }

    /// @notice The EIP-712 digest a confirming verifier signs for a fraud verdict.
    function verdictDigest(
        address provider,
        uint64 epoch,
        uint64 index,
        bytes32 receipt,
        bytes32 channel,
        uint128 cost
    ) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VERDICT_TYPEHASH, provider, epoch, index, receipt, channel, cost));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The EIP-712 digest a confirming verifier signs that a planted answer fails.
    function plantConfirmationDigest(address provider, uint64 epoch, uint64 index) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(PLANT_CONFIRMATION_TYPEHASH, provider, epoch, index));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The verifier that audits a leaf, or zero when the leaf is not selected (or its
    /// beacon cannot be drawn yet, or nobody is eligible).
    function assignee(address provider, uint64 epoch, uint64 index) external view returns (address) {
        (bytes32 b, bool ok,) = _drawBeacon(epoch + 1);
        bytes32 stored = beacons[epoch + 1];
        if (stored != 0) (b, ok) = (stored, true);
        return ok ? _assigneeUnder(b, provider, epoch, index) : address(0);
    }

    // ----- stake -----

    /// @notice Bonds `amount` of the sender's tokens (approved to this contract) as stake.
    function stake(uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Account storage acct = accounts[msg.sender];
        acct.stake += a;
        emit Staked(msg.sender, a, acct.stake);
        _pull(msg.sender, a);
    }

    /// @notice Starts unbonding `amount` of stake; it is withdrawable `unbondingEpochs` from now.
    /// @dev One unbonding bucket per account: a later unstake delays the whole bucket, so stake
    /// never leaves earlier than the ledger would release it.
    function unstake(uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Account storage acct = accounts[msg.sender];
        if (acct.stake < a) revert InsufficientStake(msg.sender, acct.stake, a);
        acct.stake -= a;
        acct.unbonding += a;
        uint64 release = currentEpoch() + unbondingEpochs;
        if (release > acct.releaseEpoch) acct.releaseEpoch = release;
        emit Unstaked(msg.sender, a, acct.releaseEpoch);
        if (acct.verifier && acct.stake < minVerifierStake) _setVerifier(msg.sender, false);
    }

    /// @notice Withdraws the whole unbonded bucket once its release epoch is reached.
    function withdraw() external nonReentrant {
        Account storage acct = accounts[msg.sender];
        uint128 amount = acct.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        // A revealed failure may still cost this stake (the ledger expires it at the epoch's
        // start; here someone must call expireAlarm first).
        if (acct.openAlarms != 0) revert AlarmsOpen(msg.sender, acct.openAlarms);
        uint64 epoch = currentEpoch();
        if (epoch < acct.releaseEpoch) revert StillUnbonding(msg.sender, acct.releaseEpoch, epoch);
        acct.unbonding = 0;
        acct.releaseEpoch = 0;
        emit Withdrawn(msg.sender, amount);
        _push(msg.sender, amount);
    }

    /// @notice Bonds `extraStake` more (may be zero) and becomes a verifier; the bonded stake
    /// must reach `minVerifierStake`.
    function registerVerifier(uint256 extraStake) external nonReentrant {
        if (extraStake > type(uint128).max) revert AmountTooLarge(extraStake);
        uint128 a = uint128(extraStake);
        Account storage acct = accounts[msg.sender];
        acct.stake += a;
        if (acct.stake < minVerifierStake) revert InsufficientStake(msg.sender, acct.stake, minVerifierStake);
        _setVerifier(msg.sender, true);
        if (a > 0) emit Staked(msg.sender, a, acct.stake);
        emit VerifierRegistered(msg.sender, acct.stake);
        if (a > 0) _pull(msg.sender, a);
    }

    /// @notice Declares the sender's ed25519 network key with the key's 64-byte signature over
    /// the binding message (see docs/settlement.md). The chain cannot check ed25519: it only
    /// records the pair; peers verify the signature off chain before trusting the binding.
    function bindNetworkKey(bytes32 key, bytes calldata bindingSig) external {
        if (key == bytes32(0) || bindingSig.length != 64) revert BadNetworkKeyBinding();
        networkKey[msg.sender] = key;
        networkKeySig[msg.sender] = bindingSig;
        emit NetworkKeyBound(msg.sender, key, bindingSig);
    }

    // ----- payment channels -----

    /// @notice Escrows `amount` in a new channel from the sender to `provider`; the payer may
    /// ask to close it from epoch now + `timeoutEpochs`, which must exceed the claim window.
    function openChannel(address provider, uint256 amount, uint64 timeoutEpochs)
        external
        nonReentrant
        returns (bytes32 id)
    {
        if (provider == address(0) || provider == msg.sender) revert BadChannelParty(provider);
        uint128 a = _amount(amount);
        if (timeoutEpochs <= claimWindowEpochs) revert ChannelTimeoutTooShort(timeoutEpochs, claimWindowEpochs);
        uint64 expires = currentEpoch() + timeoutEpochs;
        uint64 nonce = channelNonce[msg.sender]++;
        id = channelId(msg.sender, nonce);
        channels[id] = Channel({
            payer: msg.sender,
            expiresEpoch: expires,
            provider: provider,
            closesEpoch: 0,
            closed: false,
            deposit: a,
            claimed: 0,
            refunded: 0
        });
        emit ChannelOpened(id, msg.sender, provider, a, expires);
        _pull(msg.sender, a);
    }

    /// @notice Adds `amount` to an open channel; payer only, not once closing.
    function topUp(bytes32 id, uint256 amount) external nonReentrant {
        uint128 a = _amount(amount);
        Channel storage c = _channel(id);
        if (c.closed || c.closesEpoch != 0) revert ChannelIsClosed(id);
        if (c.payer != msg.sender) revert NotChannelPayer(id, msg.sender);
        c.deposit += a;
        emit ChannelToppedUp(id, a, c.deposit);
        _pull(msg.sender, a);
    }

    /// @notice The provider claims the increase of `cumulative` over what it claimed before,
    /// with the payer's EIP-712 signature over Voucher(id, cumulative). A share
    /// (`auditFeeBps`) goes to the audit pool.
    function claim(bytes32 id, uint256 cumulative, bytes calldata payerSig) external nonReentrant {
        Channel storage c = _channel(id);
        if (c.closed) revert ChannelIsClosed(id);
        uint64 epoch = currentEpoch();
        if (c.closesEpoch != 0 && epoch >= c.closesEpoch) revert ChannelIsClosed(id);
        if (c.provider != msg.sender) revert NotChannelProvider(id, msg.sender);
        address signer = _recover(voucherDigest(id, cumulative), payerSig);
        if (signer != c.payer) revert ForgedVoucher(id, signer);
        if (cumulative <= c.claimed) revert DoubleClaim(cumulative, c.claimed);
        if (cumulative > c.deposit) revert OverClaim(cumulative, c.deposit);
        uint256 increase = cumulative - c.claimed;
        c.claimed = uint128(cumulative);
        uint256 fee = (increase * auditFeeBps) / 10_000;
        auditPool += fee;
        emit VoucherClaimed(id, msg.sender, increase, cumulative, fee);
        _push(msg.sender, increase - fee);
    }

    /// @notice After the timeout the payer asks to close; the provider keeps `claimWindowEpochs`
    /// to claim, then anyone may finalize.
    function requestClose(bytes32 id) external {
        Channel storage c = _channel(id);
        if (c.closed || c.closesEpoch != 0) revert ChannelIsClosed(id);
        if (c.payer != msg.sender) revert NotChannelPayer(id, msg.sender);
        uint64 epoch = currentEpoch();
        if (epoch < c.expiresEpoch) revert ChannelNotExpired(id, c.expiresEpoch, epoch);
        c.closesEpoch = epoch + claimWindowEpochs;
        emit ChannelClosing(id, c.closesEpoch);
    }

    /// @notice Closes a channel whose claim window has passed and returns the unclaimed rest
    /// to the payer. Anyone may call it; the refund goes only to the payer.
    function finalizeClose(bytes32 id) external nonReentrant {
        Channel storage c = _channel(id);
        if (c.closed) revert ChannelIsClosed(id);
        uint64 epoch = currentEpoch();
        if (c.closesEpoch == 0 || epoch < c.closesEpoch) revert ChannelNotDue(id, c.closesEpoch, epoch);
        uint256 refund = uint256(c.deposit) - uint256(c.claimed);
        c.closed = true;
        emit ChannelClosed(id, refund);
        if (refund > 0) _push(c.payer, refund);
    }

    // ----- receipt roots -----

    /// @notice A staked provider commits to the Merkle root (BLAKE3, opaque here) of its
    /// receipts for the current epoch; one root per provider and epoch.
    function postReceiptRoot(uint64 epoch, bytes32 root, uint64 receipts) external {
        _postRoot(epoch, root, receipts, false);
    }

    /// @notice Like postReceiptRoot, for receipts that missed the roots of their epoch and the
    /// next: every leaf is audited, and the provider's unbonding stake is held until the
    /// root's verdicts can no longer land.
    function postLateRoot(uint64 epoch, bytes32 root, uint64 receipts) external {
        _postRoot(epoch, root, receipts, true);
    }

    // ----- audits -----

    /// @notice Records the beacon of `epoch` (see _drawBeacon). Anyone may; the first root
    /// posted in an epoch and the first commitment that needs it record it too.
    function recordBeacon(uint64 epoch) external returns (bytes32) {
        return _beacon(epoch);
    }

    /// @notice The assigned verifier of a selected leaf commits to its outcome, as
    /// auditCommitment, in epochs e + 1 ..= e + 1 + auditWindowEpochs of the root's epoch e.
    function commitAudit(address provider, uint64 epoch, uint64 index, bytes32 commitment) external {
        uint256 e = epoch;
        _window(e + 1, e + 1 + auditWindowEpochs);
        bytes32 b = _beacon(epoch + 1);
        if (_assigneeUnder(b, provider, epoch, index) != msg.sender) {
            revert NotAssigned(provider, epoch, index, msg.sender);
        }
        Leaf storage l = leaves[leafKey(provider, epoch, index)];
        if (l.verifier != address(0)) revert AlreadyCommitted(provider, epoch, index);
        l.commitment = commitment;
        l.verifier = msg.sender;
        l.committedEpoch = currentEpoch();
        emit AuditCommitted(msg.sender, provider, epoch, index);
    }

    /// @notice In a later epoch than its commitment, up to e + 2 + auditWindowEpochs, the
    /// verifier opens it. A pass pays the audit fee now; a failure pays only once a verdict or
    /// a plant confirms it, and costs `falseAlarmBps` of the verifier's stake if nothing does.
    /// `receipt` is the audited leaf (its `ReceiptLeaf` hash; zero may do for a failure).
    function revealAudit(address provider, uint64 epoch, uint64 index, bool passed, bytes32 receipt, bytes32 salt)
        external
        nonReentrant
    {
        Leaf storage l = leaves[leafKey(provider, epoch, index)];
        if (
            l.verifier != msg.sender || l.outcome != 0
                || l.commitment != auditCommitment(msg.sender, provider, epoch, index, passed, salt)
        ) revert BadReveal();
        _window(uint256(l.committedEpoch) + 1, uint256(epoch) + 2 + auditWindowEpochs);
        uint256 fee;
        if (passed) {
            l.outcome = PASSED;
            // No credit under a late root (it re-posts old receipts); on probation a receipt
            // counts once, whatever roots hold it (the ledger's rule).
            Account storage a = accounts[provider];
            if (!roots[provider][epoch].full) {
                if (a.cleanAudits >= probationJobs) {
                    a.cleanAudits += 1;
                } else if (!probationCredited[provider][receipt]) {
                    probationCredited[provider][receipt] = true;
                    a.cleanAudits += 1;
                }
            }
            fee = _takeFee();
        } else {
            l.outcome = FAILED;
            l.alarm = true;
            accounts[msg.sender].openAlarms += 1;
        }
        emit AuditRevealed(msg.sender, provider, epoch, index, passed, fee);
        if (fee > 0) _push(msg.sender, fee);
    }

    /// @notice The verifier that revealed a failed audit of the leaf brings the fraud, with a
    /// second registered verifier's EIP-712 signature over it, in the verdict window
    /// e + 4 + w ..= e + 3 + w + x. The leaf must be under the provider's root; the provider
    /// loses `slashBps` of its stake: `bountyBps` of that to the sender (with its fee), the
    /// receipt's cost (capped by what its channel paid and had not refunded) to that channel's
    /// payer, the rest burned.
    function fraudVerdict(Fraud calldata v, address confirmer, bytes calldata confirmerSig) external nonReentrant {
        (Leaf storage l, Channel storage c) = _checkFraud(v, confirmer, confirmerSig);
        l.judged = true;
        uint256 fee = _confirmAlarm(l);
        uint256 slashed = _slash(v.provider, slashBps);
        accounts[v.provider].frauds += 1;
        uint256 bounty = (slashed * bountyBps) / 10_000;
        uint256 refund = _min(_min(v.cost, uint256(c.claimed) - uint256(c.refunded)), slashed - bounty);
        c.refunded += uint128(refund);
        burned += slashed - bounty - refund;
        _emitSlashed(v, slashed, bounty, c.payer, refund);
        if (fee + bounty > 0) _push(msg.sender, fee + bounty);
        if (refund > 0) _push(c.payer, refund);
    }

    /// @dev fraudVerdict's checks, in the ledger's order; returns the leaf and the receipt's
    /// channel.
    function _checkFraud(Fraud calldata v, address confirmer, bytes calldata confirmerSig)
        private
        view
        returns (Leaf storage l, Channel storage c)
    {
        if (msg.sender == confirmer || v.provider == msg.sender || v.provider == confirmer) {
            revert ConflictedVerdict();
        }
        bytes32 digest = verdictDigest(v.provider, v.epoch, v.index, v.receipt, v.channel, v.cost);
        if (_recover(digest, confirmerSig) != confirmer) revert BadConfirmation(confirmer);
        // The sender is the assigned verifier (its reveal is checked below) even if it left the
        // set since; the confirmer must be registered now.
        if (!accounts[confirmer].verifier) revert NotVerifier(confirmer);
        Root storage r = _root(v.provider, v.epoch);
        if (v.index >= r.receipts) revert BadLeafIndex(v.index, r.receipts);
        _window(uint256(v.epoch) + 4 + auditWindowEpochs, uint256(v.epoch) + 3 + auditWindowEpochs + escalationEpochs);
        bytes32 key = leafKey(v.provider, v.epoch, v.index);
        l = leaves[key];
        if (l.judged) revert AlreadyJudged(key);
        if (!_underRoot(r, v.index, receiptLeaf(v.receipt, v.channel, v.cost), v.proof)) {
            revert BadReceiptProof(v.receipt);
        }
        c = _channel(v.channel);
        if (c.provider != v.provider) revert NotChannelProvider(v.channel, v.provider);
        if (l.verifier != msg.sender || l.outcome != FAILED) revert UnrevealedVerdict();
    }

    function _emitSlashed(Fraud calldata v, uint256 slashed, uint256 bounty, address payer, uint256 refund) private {
        emit Slashed(
            v.provider, v.epoch, v.index, v.receipt, slashed, msg.sender, bounty, payer, refund, slashed - bounty - refund
        );
    }

    /// @notice A revealed failure that neither a verdict nor a plant confirmed by the end of
    /// the verdict window costs its verifier `falseAlarmBps` of its stake (burned). Anyone may
    /// call it from epoch e + 4 + w + x on; the verifier cannot withdraw until it is called.
    function expireAlarm(address provider, uint64 epoch, uint64 index) external {
        bytes32 key = leafKey(provider, epoch, index);
        Leaf storage l = leaves[key];
        if (!l.alarm) revert NoAlarm(key);
        uint256 due = uint256(epoch) + 4 + auditWindowEpochs + escalationEpochs;
        uint64 now_ = currentEpoch();
        if (now_ < due) revert AlarmNotDue(now_, due);
        l.alarm = false;
        accounts[l.verifier].openAlarms -= 1;
        uint256 slashed = _slash(l.verifier, falseAlarmBps);
        burned += slashed;
        emit FalseAlarm(l.verifier, provider, epoch, index, slashed);
    }

    /// @notice Any account commits to a planted fake fraud (plantCommitment, which hides the
    /// canary provider), escrowing `plantBond`. It must come no later than the root's epoch.
    function plant(bytes32 commitment) external nonReentrant {
        if (plants[commitment].planter != address(0)) revert PlantExists(commitment);
        plants[commitment] = Plant({planter: msg.sender, epoch: currentEpoch(), bond: plantBond});
        plantBonds += plantBond;
        emit FraudPlanted(commitment);
        if (plantBond > 0) _pull(msg.sender, plantBond);
    }

    /// @notice In the root's one plant epoch (e + 3 + w: every reveal in, no verdict yet) the
    /// provider that posted the root opens one plant under it. The leaf is judged (no verdict
    /// can slash the canary for it). The verifier that failed it takes the bond and its fee;
    /// else the bond goes back to the planter. The verifier that passed it loses
    /// `lazySlashBps` of its stake only when `confirmer`, a registered third verifier, signed
    /// plantConfirmationDigest: no single key takes anyone's stake. `confirmer` zero: none.
    function revealPlant(uint64 epoch, uint64 index, bytes32 salt, address confirmer, bytes calldata confirmerSig)
        external
        nonReentrant
    {
        if (confirmer != address(0) && _recover(plantConfirmationDigest(msg.sender, epoch, index), confirmerSig) != confirmer) {
            revert BadConfirmation(confirmer);
        }
        (Plant memory p, Leaf storage l) = _openPlant(epoch, index, salt);
        address lazy = l.outcome == PASSED && confirmer != address(0) ? l.verifier : address(0);
        address caught = l.outcome == FAILED ? l.verifier : address(0);
        uint256 slashed;
        if (lazy != address(0)) {
            if (confirmer == lazy || confirmer == msg.sender) revert ConflictedVerdict();
            if (!accounts[confirmer].verifier) revert NotVerifier(confirmer);
            slashed = _slash(lazy, lazySlashBps);
            burned += slashed;
        }
        emit PlantRevealed(msg.sender, epoch, index, lazy, slashed, caught);
        uint256 pay = p.bond + (caught != address(0) ? _confirmAlarm(l) : 0);
        if (pay > 0) _push(caught != address(0) ? caught : p.planter, pay);
    }

    /// @dev revealPlant's checks: the sender's plant at the leaf, committed no later than the
    /// root's epoch (before the beacon that selected), in the plant epoch, under the root, the
    /// first of the root, the leaf not judged. Removes the plant and judges the leaf.
    function _openPlant(uint64 epoch, uint64 index, bytes32 salt) private returns (Plant memory p, Leaf storage l) {
        bytes32 commitment = plantCommitment(msg.sender, epoch, index, salt);
        p = plants[commitment];
        if (p.planter == address(0) || p.epoch > epoch) revert BadReveal();
        uint256 at = uint256(epoch) + 3 + auditWindowEpochs;
        _window(at, at);
        Root storage r = roots[msg.sender][epoch];
        if (index >= r.receipts) revert BadReveal();
        if (r.plantOpened) revert OnePlantPerRoot(msg.sender, epoch);
        r.plantOpened = true;
        delete plants[commitment];
        plantBonds -= p.bond;
        bytes32 key = leafKey(msg.sender, epoch, index);
        l = leaves[key];
        if (l.judged) revert AlreadyJudged(key);
        l.judged = true;
    }

    function _postRoot(uint64 epoch, bytes32 root, uint64 receipts, bool full) private {
        uint64 now_ = currentEpoch();
        if (epoch != now_) revert WrongEpoch(now_, epoch);
        if (receipts == 0 || receipts > MAX_RECEIPTS) revert BadReceiptCount(receipts);
        Account storage acct = accounts[msg.sender];
        if (acct.stake < minProviderStake) revert InsufficientStake(msg.sender, acct.stake, minProviderStake);
        Root storage r = roots[msg.sender][epoch];
        if (r.receipts != 0) revert RootAlreadyPosted(msg.sender, epoch);
        r.root = root;
        r.receipts = receipts;
        r.full = full;
        // Fixed now, before the beacon that selects: every leaf while on probation, after a
        // confirmed fraud, and for a late root.
        r.auditPpm = full || acct.frauds > 0 || acct.cleanAudits < probationJobs ? FULL_AUDIT_PPM : auditFloorPpm;
        emit ReceiptRootPosted(msg.sender, epoch, root, receipts, full);
        // The first root of an epoch records its beacon (which selects the previous epoch's
        // roots) while the block hash is readable.
        if (beacons[epoch] == 0) {
            (bytes32 b, bool ok, uint256 src) = _drawBeacon(epoch);
            if (ok && src == startBlock + uint256(epoch) * epochBlocks) {
                beacons[epoch] = b;
                emit BeaconRecorded(epoch, b, src);
            }
        }
        if (full && acct.unbonding != 0) {
            uint64 until = epoch + unbondingEpochs;
            if (acct.releaseEpoch < until) {
                acct.releaseEpoch = until;
                emit UnbondingHeld(msg.sender, until);
            }
        }
    }

}
